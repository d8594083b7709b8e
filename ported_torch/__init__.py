"""PyTorch ports and the TF/Caffe-compatible layers torch lacks. Never imports tensorflow or keras; imports only
``parity.core``; sets no environment (the entry points do: ``parity``, its CLI and pytest plugin)."""
