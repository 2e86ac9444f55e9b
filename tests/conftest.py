"""Suite-wide settings."""

from hypothesis import settings

# Property tests check invariants, not speed: on a busy 2-core machine a per-example
# deadline only makes them flaky. Speed lives in benchmarks/.
settings.register_profile("trail", deadline=None)
settings.load_profile("trail")
