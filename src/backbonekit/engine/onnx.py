"""An exported model run by ONNX Runtime behind ``nn.Module``'s call, so the evaluation code of either
trainer runs it as it runs a PyTorch model (``evaluate FILE.onnx``, ``detect evaluate FILE.onnx``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind ``nn.Module``'s call, so the training code's ``evaluate`` can run it."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def forward(self, x: Tensor) -> Tensor:
        batch = x.detach().cpu().float().contiguous().numpy()
        step = self.fixed_batch or len(batch)
        outs = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            if len(chunk) < step:  # a fixed-batch file: pad with copies, drop their outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), 0)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0])
        return torch.from_numpy(np.concatenate(outs)[: len(batch)])
