"""The stages of a check, one module each, run in order by :func:`parity.harness.check` over one
:class:`parity.stages.context.CheckContext`: ``structure``, ``forward`` (``forward_eval``), ``isolated``,
``onnx`` (the optional onnxruntime leg) and ``train`` (``forward_train``, ``gradients``, ``step``,
``trajectory``). Each module's ``run(ctx)`` does nothing unless its stage was asked for, and appends its
:class:`parity.core.results.StageResult` to ``ctx.result``; a new stage is a new module with a ``run(ctx)``,
listed in ``parity.harness.PIPELINE``."""
