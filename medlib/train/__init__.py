"""medlib.train: train where the data is.

    from dask.distributed import Client, LocalCluster
    from medlib.train import fit, federated_fit

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    result = fit(model, dataset, client=client, epochs=10, batch_size=8)         # data-parallel (DDP)
    result = federated_fit(model, {"site-a": "/data/a", "site-b": "/data/b"},     # only weights move
                           load=my_loader, client=client, rounds=20)

:func:`fit` runs PyTorch DistributedDataParallel on the workers of any ``dask.distributed``
client (gloo on CPU, nccl on GPU); :func:`federated_fit` trains one model at several sites, each
a Dask worker named after its site that reads only its own data, and averages their updates
(FedAvg or FedProx), optionally with differential privacy and secure aggregation.
"""

from .checkpoint import TrainError
from .ddp import FitResult, fit
from .federated import DifferentialPrivacy, federated_fit

__all__ = ["DifferentialPrivacy", "FitResult", "TrainError", "federated_fit", "fit"]
