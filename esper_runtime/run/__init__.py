"""``esper run``: a user's model on a user's data, grown under Tamiyo and compared with honest baselines."""

__all__ = ["RunConfig", "load_run_config"]


def __getattr__(name: str):
    if name in __all__:
        from esper_runtime.run import config

        return getattr(config, name)
    raise AttributeError(f"module 'esper_runtime.run' has no attribute {name!r}")
