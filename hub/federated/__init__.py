"""Federated runs on the NVIDIA FLARE federation, submitted for users by the hub service
``medhub-federated`` (:mod:`medhub.federated.service`)."""
