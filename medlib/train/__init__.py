"""medlib.train: train where the data is.

    from dask.distributed import Client, LocalCluster
    from medlib.train import fit, federated_fit

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    result = fit(model, dataset, client=client, epochs=10, batch_size=8)      # data-parallel (DDP)
    run = federated_fit(recipe, sites=["site-a", "site-b"], rounds=20)        # across hospitals

:func:`fit` runs PyTorch DistributedDataParallel on the workers of any ``dask.distributed``
client (gloo on CPU, nccl on GPU), on the platform's own cluster. :func:`federated_fit` trains
across hospitals on NVIDIA FLARE: the notebook sends a recipe (configuration, no code,
:mod:`medlib.train.recipe`); each site runs it with code it installed, if its own policy approves
it (:mod:`medlib.train.approval`), and sends back only its securely aggregated update, sample
count and metrics (:mod:`medlib.train.site`, :mod:`medlib.train.centre`).
"""

import importlib

#: what the package offers, by the module holding it: imported when first used, so that the hub's
#: federated service (recipes, jobs, weights) runs without torch or Dask
_WHERE = {"TrainError": "checkpoint", "FitResult": "ddp", "fit": "ddp", "FederatedRun": "federated",
          "federated_fit": "federated", "follow": "federated"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
