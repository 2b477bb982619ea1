"""Scale-out scoring on Ray Data (``pip install "blur-ensemble[ray]"``; see docs/ray.md).

    import ray
    from ensemble.distributed import scan_dataset, run_scan

    records = scan_dataset(["s3://bucket/photos"], recursive=True)   # a lazy ray.data.Dataset of scan records
    result = run_scan(["/mnt/photos"], "scores.parquet", recursive=True)   # resumable, into a Parquet folder

Modules, in the order data flows: :mod:`.listing` (the files, listed in parallel), :mod:`.scoring` (the model
shipped to an actor pool that scores them), :mod:`.output` (the Parquet parts and what a rerun skips),
:mod:`.job` (the resumable run ``blur-detect scan --engine ray`` makes), :mod:`.plan` (an output read back as the
plan of a local sort) and :mod:`.cli` (the command line's side, which prints).

Importing this package imports neither Ray nor pyarrow: each function imports them when it runs.
"""

_PUBLIC = {
    "scan_dataset": "scoring",   # paths or a Dataset of paths -> a Dataset of records
    "run_scan": "job",           # list, skip what is done, score, write Parquet parts
    "JobResult": "job",
    "read_plan": "plan",         # a Parquet output as the plan of a local sort
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'ensemble.distributed' has no attribute {name!r}")
