"""The ``medhub-batch`` hub service: notebooks run as batch jobs with papermill, each in a
server of its user (see :mod:`medhub.batch.service`); :mod:`medhub.batch.store` keeps the jobs."""
