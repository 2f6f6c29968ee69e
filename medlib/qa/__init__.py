"""medlib.qa: validate a decision-support model on your site's data, watch its inputs drift, and
explain its outputs.

    from medlib import qa
    qa.check_dataset("lung-ct-2024")                              # input quality, per series
    report = qa.validate(model, "lung-ct-2024", task="segmentation", labels=masks)
    report.save("qa/unet-v3")                                      # HTML + JSON, audited
    reference = qa.profile(model, "lung-ct-2024", version="v000001", layer="model.1.submodule")
    qa.drift(reference, "lung-ct-2024").raise_for_drift()         # a failing batch job on drift
    explanation = qa.explain(model, volume, methods=("gradcam", "occlusion", "integrated_gradients"))
    qa.sanity_checks(model, volume)                               # Adebayo et al.'s randomisation tests

:func:`check_series` (:mod:`.series`) is the quality check the hospital edge runs too.
:func:`validate` (:mod:`.validation`) evaluates a model with MONAI's and scikit-learn's metrics,
bootstrap intervals, calibration and strata by site and scanner, into a report with a model card
(:mod:`.report`). :func:`profile` and :func:`drift` (:mod:`.monitor`) compare a batch with a
reference by scipy's tests under false-discovery control. :func:`explain` and
:func:`sanity_checks` (:mod:`.saliency`, :mod:`.sanity`) compute saliency maps (MONAI, Captum),
show them over the series and save them as DICOM.
"""

import importlib

#: what the package offers, by the module holding it: imported when first used, so that the edge
#: runs the series checks without MONAI or matplotlib
_WHERE = {"QaError": "errors", "SeriesReport": "series", "check_series": "series", "check_dataset": "series",
          "validate": "validation", "ValidationReport": "validation", "Profile": "monitor", "profile": "monitor",
          "drift": "monitor", "DriftReport": "monitor", "DriftDetected": "monitor", "explain": "saliency",
          "Explanation": "saliency", "sanity_checks": "sanity", "SanityReport": "sanity"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
