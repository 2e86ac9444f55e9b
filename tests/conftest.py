"""Suite-wide settings."""

from hypothesis import settings

# Property tests check invariants, not speed: on a busy 2-core machine a per-example
# deadline only makes them flaky. Speed lives in benchmarks/.
settings.register_profile("trail", deadline=None)
settings.load_profile("trail")


def pytest_collection_modifyitems(items) -> None:
    """Files that start engines first, the journey's before them, each file's tests in their
    own order: `make test`'s workers take whole files in this order, so the longest ones
    start early instead of ending the run on one worker while the other idles."""

    def weight(item) -> int:
        return 2 if item.get_closest_marker("journey") else 1 if item.get_closest_marker("engine") else 0

    heaviest: dict = {}
    for item in items:
        heaviest[item.path] = max(heaviest.get(item.path, 0), weight(item))
    items.sort(key=lambda item: -heaviest[item.path])
