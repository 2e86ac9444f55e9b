"""Suite-wide settings."""

from hypothesis import settings

# Property tests check invariants, not speed: on a busy 2-core machine a per-example
# deadline only makes them flaky. Speed lives in benchmarks/.
settings.register_profile("trail", deadline=None)
settings.load_profile("trail")


def pytest_collection_modifyitems(items) -> None:
    """Files that start engines first and the journey last, each file's tests in their own
    order: `make test`'s workers take whole files in this order, so the engine files share
    the cores early and the journey, whose steps have deadlines, runs beside little else."""

    def rank(item) -> int:
        return 2 if item.get_closest_marker("journey") else 0 if item.get_closest_marker("engine") else 1

    ranks: dict = {}
    for item in items:
        ranks[item.path] = max(ranks.get(item.path, 0), rank(item))
    items.sort(key=lambda item: ranks[item.path])
