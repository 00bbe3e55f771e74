"""The lab: a world with a known gold reward (``world``), its evaluation (``evaluation``), the
data option ``data=world`` (``plugin``) and multi-stage pipelines (``pipeline``)."""
