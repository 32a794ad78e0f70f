"""The run machinery both trainers (classification :mod:`backbonekit.train`, :mod:`backbonekit.detection`)
sit on; it imports neither.

- :mod:`.device`: the device, mixed precision, determinism, the model behind DDP;
- :mod:`.dist`: torch.distributed helpers; :mod:`.launch`: ``--nproc N`` through torchrun's launcher API;
- :mod:`.config`: config files (read, resolve, write) and the one-line field checks;
- :mod:`.runs`: the run folder (its name, lock, resume rules, evaluation folders), resume checkpoints;
- :mod:`.optim`: optimizers, learning-rate schedules, the NaN check and one optimizer step;
- :mod:`.budget`: ``--time``; :mod:`.report`: metrics.csv, figures, report.html; :mod:`.onnx`: ONNX
  Runtime behind ``nn.Module``.
"""
