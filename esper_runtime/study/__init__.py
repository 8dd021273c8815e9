"""``esper study``: does growth pay? Grown hosts against the frozen host, a parameter-matched static model and a
width sweep of static models, per task and random seed, with one set of controller defaults for every task."""

__all__ = ["StudyOptions", "TASKS", "run_study"]


def __getattr__(name: str):
    if name in __all__:
        from esper_runtime.study import study

        return getattr(study, name)
    raise AttributeError(f"module 'esper_runtime.study' has no attribute {name!r}")
