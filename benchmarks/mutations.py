"""A catalogue of planted bugs: how well does parity detect a port's mistake, find the first divergent layer
and name the cause?

Each :class:`Mutation` is a mistake a user makes, built the way the user would make it: through the port's
public constructor (``mini_xception(bn_eps=1e-5)``), a small subclass or an attribute swapped after
construction (``model.block1.sepconv1_bn = nn.Identity()``), a load hook standing in for the user's own
weight-loading code, an optimizer configured the user's way (registered with
:func:`parity.optim.adapters.register_adapter`), or a loss configured differently on the port side. Nothing
here reaches into the harness. Each carries the expected ``(stage, first layer path, cause)``.

Every builder is a ``"benchmarks.mutations:NAME"`` string, so a mutation also runs from the CLI:
``parity check minixception --port benchmarks.mutations:mx_relu_before_bn``.

:func:`run_mutation` runs one through :func:`parity.harness.check` (the code the CLI runs) and scores it;
``benchmarks/mutation_suite.py`` runs the catalogue and the false-alarm sweep. Frameworks are imported
inside the builders only.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from parity.core.conventions import (KERAS_BN_MOMENTUM, TORCH_BN_EPSILON, TORCH_BN_MOMENTUM_DEFAULT,
                                torch_weight_decay_from_keras_l2)
from parity.optim.caffe import CaffeSGDAdapter
from parity.optim.adapters import AdamAdapter, SGDAdapter, torch_param_groups, register_adapter
from parity.core.results import CheckResult
from parity.core.spec import LossSpec, OptimizerSpec, PairSpec

MOD = "benchmarks.mutations"


# ==== port builders: minixception ============================================================================
def _mx(**cfg):
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg)


def mx_bn_eps_1e5(**cfg):
    """torch's default BatchNorm eps everywhere."""
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, bn_eps=TORCH_BN_EPSILON)


def mx_bn_eps_one_layer(**cfg):
    """One BatchNorm left at torch's default eps (a layer added by hand later)."""
    m = _mx(**cfg)
    m.block2.sepconv1_bn.eps = TORCH_BN_EPSILON
    return m


def mx_bn_momentum_keras_value(**cfg):
    """Keras' 0.99 passed to torch as is."""
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, bn_momentum=KERAS_BN_MOMENTUM)


def mx_bn_momentum_torch_default(**cfg):
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, bn_momentum=TORCH_BN_MOMENTUM_DEFAULT)


def mx_symmetric_pool(**cfg):
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, symmetric_pool=True)


def mx_softmax_output(**cfg):
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, softmax_output=True)


def mx_conv_bias(**cfg):
    from ported_torch.minixception import mini_xception

    return mini_xception(**cfg, conv_bias=True)


def mx_bn_affine_off(**cfg):
    """``nn.BatchNorm2d(affine=False)`` where Keras has center/scale."""
    from torch import nn

    m = _mx(**cfg)
    m.base.bn1 = nn.BatchNorm2d(m.base.bn1.num_features, eps=m.base.bn1.eps, momentum=m.base.bn1.momentum,
                                affine=False)
    return m


def mx_missing_bn(**cfg):
    from torch import nn

    m = _mx(**cfg)
    m.block1.sepconv1_bn = nn.Identity()
    return m


def mx_relu_before_bn(**cfg):
    """The user's forward applies ReLU before BatchNorm in the stem (conv -> relu -> bn)."""
    from ported_torch.minixception import MODULE_FILTERS, MiniXception

    class ReluFirst(MiniXception):
        def forward(self, x):
            b = self.base
            x = b.bn1(b.relu1(b.conv1(x)))  # the bug: reference is conv -> bn -> relu
            x = b.relu2(b.bn2(b.conv2(x)))
            for i in range(len(MODULE_FILTERS)):
                x = getattr(self, f"block{i + 1}")(x)
            return self.head_gap(self.head_conv(x))

    return ReluFirst(num_classes=cfg.get("num_classes", 7), in_channels=tuple(cfg.get("input_shape", (64, 64, 1)))[-1])


def mx_extra_relu_on_shortcut(**cfg):
    """An extra ReLU on block1's shortcut branch."""
    import torch.nn.functional as F

    from ported_torch.minixception import MODULE_FILTERS, MiniXception

    class ExtraRelu(MiniXception):
        def forward(self, x):
            x = self.base(x)
            b = self.block1
            residual = F.relu(b.residual_bn(b.residual_conv(x)))  # the bug
            y = b.sepconv1_relu(b.sepconv1_bn(b.sepconv1(x)))
            y = b.pool(b.sepconv2_bn(b.sepconv2(y)))
            x = b.add(y, residual)
            for i in range(1, len(MODULE_FILTERS)):
                x = getattr(self, f"block{i + 1}")(x)
            return self.head_gap(self.head_conv(x))

    return ExtraRelu(num_classes=cfg.get("num_classes", 7), in_channels=tuple(cfg.get("input_shape", (64, 64, 1)))[-1])


def mx_relu6(**cfg):
    """``nn.ReLU6`` where the reference has a plain ReLU (block4's activations exceed 6)."""
    from torch import nn

    m = _mx(**cfg)
    m.block4.sepconv1_relu = nn.ReLU6()
    return m


def mx_leaky_relu(**cfg):
    from torch import nn

    m = _mx(**cfg)
    m.base.relu1 = nn.LeakyReLU(0.01)
    return m


def mx_missing_relu(**cfg):
    from torch import nn

    m = _mx(**cfg)
    m.block1.sepconv1_relu = nn.Identity()
    return m


def mx_head_no_bias(**cfg):
    from ported_torch.layers import Conv2dSame

    m = _mx(**cfg)
    hc = m.head_conv
    m.head_conv = Conv2dSame(hc.in_channels, hc.out_channels, 3, bias=False)
    return m


def mx_head_stride2(**cfg):
    from ported_torch.layers import Conv2dSame

    m = _mx(**cfg)
    hc = m.head_conv
    m.head_conv = Conv2dSame(hc.in_channels, hc.out_channels, 3, stride=2, bias=True)
    return m


def mx_dilation2(**cfg):
    from torch import nn

    m = _mx(**cfg)
    c = m.base.conv2
    m.base.conv2 = nn.Conv2d(c.in_channels, c.out_channels, 3, dilation=2, bias=False)
    return m


def mx_pool_kernel2(**cfg):
    from ported_torch.layers import MaxPool2dSame

    m = _mx(**cfg)
    m.block2.pool = MaxPool2dSame(2, 2)
    return m


def mx_head_kernel1(**cfg):
    from ported_torch.layers import Conv2dSame

    m = _mx(**cfg)
    hc = m.head_conv
    m.head_conv = Conv2dSame(hc.in_channels, hc.out_channels, 1, bias=True)
    return m


def mx_dropout_in_eval(**cfg):
    """``F.dropout(x, 0.5)`` in forward: the functional form defaults to ``training=True``, so it is on in eval."""
    import torch.nn.functional as F

    from ported_torch.minixception import MODULE_FILTERS, MiniXception

    class DropoutAlwaysOn(MiniXception):
        def forward(self, x):
            x = self.base(x)
            for i in range(len(MODULE_FILTERS)):
                x = getattr(self, f"block{i + 1}")(x)
            x = F.dropout(x, 0.5)  # the bug: training=True by default
            return self.head_gap(self.head_conv(x))

    return DropoutAlwaysOn(num_classes=cfg.get("num_classes", 7),
                           in_channels=tuple(cfg.get("input_shape", (64, 64, 1)))[-1])


def mx_bn_frozen_in_train(**cfg):
    """The common "freeze BatchNorm" snippet: ``train()`` puts every BatchNorm back in eval mode."""
    from torch import nn

    from ported_torch.minixception import MiniXception

    class FrozenBN(MiniXception):
        def train(self, mode: bool = True):
            super().train(mode)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            return self

    return FrozenBN(num_classes=cfg.get("num_classes", 7), in_channels=tuple(cfg.get("input_shape", (64, 64, 1)))[-1])


def mx_init_after_load(**cfg):
    """``reset_parameters()`` on one layer after the weights were loaded (once, like a user's training script
    that initialises after ``load_state_dict``)."""
    m = _mx(**cfg)
    state = {"done": False}

    def reinit(module, incompatible):
        if not state["done"]:
            state["done"] = True
            module.base.conv2.reset_parameters()

    m.register_load_state_dict_post_hook(reinit)
    return m


def mx_running_var_biased(**cfg):
    """A hand-written BatchNorm that updates running_var with the biased batch variance."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BiasedVarBatchNorm2d(nn.BatchNorm2d):
        def forward(self, x):
            if not self.training:
                return super().forward(x)
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
                self.num_batches_tracked += 1
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    m = _mx(**cfg)
    _replace(m, lambda mod: type(mod) is nn.BatchNorm2d,
             lambda bn: BiasedVarBatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum))
    return m


def _replace(model, predicate, factory) -> None:
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if predicate(child):
                setattr(mod, child_name, factory(child))


def _reshape_not_transpose_on_load(linear) -> None:
    """Stand-in for a user's loader that turns a Keras (in, out) kernel into (out, in) with reshape: applied
    once, on the first load."""
    state = {"done": False}

    def hook(module, state_dict, prefix, *args):
        key = prefix + "weight"
        if key in state_dict and not state["done"]:
            state["done"] = True
            w = state_dict[key]
            state_dict[key] = w.t().reshape(w.shape).contiguous()  # kernel (in, out) reshaped, not transposed

    linear.register_load_state_dict_pre_hook(hook)


# ==== textclf / textgru (recurrent, embedding) ===================================================================
def _tc(**cfg):
    from ported_torch.textclf import text_classifier

    return text_classifier(**cfg)


def tc_batch_first_missing(**cfg):
    """nn.LSTM left at its default batch_first=False, fed Keras' (N, L, C)."""
    return _tc(**cfg, batch_first=False)


def tc_last_step_sequence_end(**cfg):
    """Both directions taken at the last step (``out[:, -1]``): the backward one's final state is at step 0."""
    return _tc(**cfg, last="sequence_end")


def tc_bias_hh_trained(**cfg):
    """bias_hh (0 after loading) left trainable: the effective bias moves twice per step."""
    return _tc(**cfg, train_bias_hh=True)


def tc_padding_idx(**cfg):
    """nn.Embedding(padding_idx=0) where the reference (mask_zero=False) trains row 0."""
    return _tc(**cfg, padding_idx=0)


# ---- textmask (Embedding(mask_zero=True), packed port) ----
def tm_mask_ignored(**cfg):
    """Embedding(mask_zero=True) ported without packing: the LSTM runs over the zero padding."""
    return _tc(**cfg, pack=False)


def tm_pre_padding_lengths(**cfg):
    """Lengths packed as if the inputs were pre-padded (valid steps taken as each row's last ``length``)."""
    return _tc(**cfg, last="pre_padded")


def tm_padding_idx_no_pack(**cfg):
    """nn.Embedding(padding_idx=0) as the port of mask_zero=True, no packing: padding rows are zero vectors,
    the LSTM still steps over them."""
    return _tc(**cfg, padding_idx=0, pack=False)


def _rnn_load_hook(module, edit) -> None:
    """Stand-in for a user's own loader: ``edit(key, tensor, state_dict)`` on the first load only."""
    state = {"done": False}

    def hook(mod, state_dict, prefix, *args):
        if state["done"]:
            return
        state["done"] = True
        for key in [k for k in state_dict if k.startswith(prefix)]:
            edit(key[len(prefix):], state_dict[key], state_dict, prefix)

    module.register_load_state_dict_pre_hook(hook)


def tc_bias_duplicated(**cfg):
    """The Keras bias copied into both bias_ih and bias_hh."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith("bias_ih"):
            sd[prefix + name.replace("bias_ih", "bias_hh")] = t.clone()

    _rnn_load_hook(m.encoder, edit)
    return m


def tc_bias_dropped(**cfg):
    """Only the kernels transferred: bias_ih left at 0."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith("bias_ih"):
            sd[prefix + name] = t.new_zeros(t.shape)

    _rnn_load_hook(m.encoder, edit)
    return m


def _reorder_blocks(t, order):
    import torch

    return torch.cat([t.chunk(len(order))[i] for i in order])


def tc_gate_order_icfo(**cfg):
    """A loader that writes the LSTM gates in TF's LSTMBlockCell order i,c,f,o instead of torch's i,f,g,o."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith(("weight_ih_l0", "weight_hh_l0")) and not name.endswith("_reverse"):
            sd[prefix + name] = _reorder_blocks(t, (0, 2, 1, 3))

    _rnn_load_hook(m.encoder, edit)
    return m


def tg_gate_order_unconverted(**cfg):
    """GRU kernels copied in Keras' z,r,h order (transposed, not reordered to torch's r,z,n)."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            sd[prefix + name] = _reorder_blocks(t, (1, 0, 2))

    _rnn_load_hook(m.encoder, edit)
    return m


def tg_batch_first_missing(**cfg):
    return _tc(**cfg, batch_first=False)


def tg_bias_hh_frozen(**cfg):
    """The LSTM recipe applied to a GRU: bias_hh frozen (requires_grad=False), but Keras' reset_after GRU trains
    its recurrent bias bias[1]."""
    m = _tc(**cfg)
    for name, p in m.encoder.named_parameters():
        if name.startswith("bias_hh"):
            p.requires_grad_(False)
    return m


def tg_bias_hh_detached(**cfg):
    """A GRU whose forward reads bias_hh through ``.detach()`` (a hand-written cell's ``b_hh.detach()``): the
    forward is exact, bias_hh never gets a gradient."""
    import torch

    m = _tc(**cfg)
    enc = m.encoder

    def forward(x):
        saved = [(n, getattr(enc, n)) for n in ("bias_hh_l0", "bias_hh_l0_reverse")]
        try:
            for n, p in saved:  # the flat weights nn.GRU passes to the kernel: bias_hh without its graph
                enc._flat_weights[enc._flat_weights_names.index(n)] = p.detach()
            out, _ = torch.nn.GRU.forward(enc, x)
        finally:
            for n, p in saved:
                enc._flat_weights[enc._flat_weights_names.index(n)] = p
        h = enc.hidden_size
        return torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)

    enc.forward = forward
    return m


# ==== transformer (attention, normalisation, activations) =========================================================
def _tf(**cfg):
    from ported_torch.transformer import transformer_block

    return transformer_block(**cfg)


def tf_layernorm_eps_torch_default(**cfg):
    """nn.LayerNorm left at torch's eps 1e-5 (Keras LayerNormalization: 1e-3)."""
    from parity.core.families.normalization import TORCH_LAYERNORM_EPSILON

    return _tf(**cfg, ln_eps=TORCH_LAYERNORM_EPSILON)


def tf_gelu_tanh(**cfg):
    """nn.GELU(approximate='tanh') for Keras' exact 'gelu'."""
    return _tf(**cfg, gelu_approximate="tanh")


def tf_attention_unscaled(**cfg):
    """Hand-written attention without the 1/sqrt(head_dim) scale."""
    return _tf(**cfg, attention_scale=1.0)


def tf_pre_norm(**cfg):
    """The pre-norm block (norm before attention/MLP) for Keras' post-norm one."""
    return _tf(**cfg, norm_first=True)


def tf_query_key_swapped(**cfg):
    """A loader that maps Keras' query kernel to k_proj and key to q_proj."""
    m = _tf(**cfg)
    state = {"done": False}

    def hook(mod, sd, prefix, *args):
        if not state["done"]:
            state["done"] = True
            for p in ("weight", "bias"):
                q, k = prefix + f"q_proj.{p}", prefix + f"k_proj.{p}"
                sd[q], sd[k] = sd[k], sd[q]

    m.attention.register_load_state_dict_pre_hook(hook)
    return m


def tf_heads_flattened_wrong(**cfg):
    """A loader that flattens the (d, h, k) query kernel as (d, k, h)."""
    m = _tf(**cfg)
    state = {"done": False}
    h = m.attention.num_heads

    def hook(mod, sd, prefix, *args):
        if not state["done"]:
            state["done"] = True
            w = sd[prefix + "q_proj.weight"]
            k = w.shape[0] // h
            sd[prefix + "q_proj.weight"] = w.reshape(h, k, -1).transpose(0, 1).reshape(w.shape).contiguous()

    m.attention.register_load_state_dict_pre_hook(hook)
    return m


# ==== encdec (transposed conv, up-sampling, skip concatenation) ===================================================
def _ed(**cfg):
    from ported_torch.encdec import encoder_decoder

    return encoder_decoder(**cfg)


def ed_transpose_padding_1_1(**cfg):
    """nn.ConvTranspose2d(k=3, s=2, padding=1, output_padding=1) for Keras 'same': one pixel off."""
    from torch import nn

    w = cfg.get("width", 8)
    return _ed(**cfg, transpose=nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1))


def ed_upsample_bilinear(**cfg):
    """nn.Upsample(mode='bilinear') where Keras' UpSampling2D is nearest."""
    from torch import nn

    return _ed(**cfg, upsample=nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))


def ed_skip_reversed(**cfg):
    """torch.cat([skip, up]) where Keras concatenates [up, skip]."""
    return _ed(**cfg, skip_order="reversed")


def ed_transpose_kernel_flipped(**cfg):
    """A loader that rotates the transposed-conv kernel by 180 degrees."""
    m = _ed(**cfg)
    state = {"done": False}

    def hook(mod, sd, prefix, *args):
        if not state["done"]:
            state["done"] = True
            sd[prefix + "weight"] = sd[prefix + "weight"].flip(-1, -2).contiguous()

    m.up1.register_load_state_dict_pre_hook(hook)
    return m


def tc_forget_bias_plus_one(**cfg):
    """A loader that adds TF 1's forget_bias=1.0 to the forget gate (Keras' stored bias already holds it)."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith("bias_ih"):
            h = t.shape[0] // 4
            t = t.clone()
            t[h:2 * h] += 1.0
            sd[prefix + name] = t

    _rnn_load_hook(m.encoder, edit)
    return m


def tc_gate_order_ifog(**cfg):
    """A loader that writes the LSTM gates as i,f,o,g (the cell candidate last)."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith(("weight_ih", "weight_hh", "bias_ih")):
            sd[prefix + name] = _reorder_blocks(t, (0, 1, 3, 2))

    _rnn_load_hook(m.encoder, edit)
    return m


def tc_softmax_output(**cfg):
    """The port ends in a softmax and is trained with F.cross_entropy (softmax twice)."""
    from torch import nn

    m = _tc(**cfg)
    m.classifier = nn.Sequential(m.classifier, nn.Softmax(dim=-1))
    return m


def tc_unidirectional(**cfg):
    """bidirectional=False where Keras wraps the LSTM in Bidirectional."""
    from ported_torch.textclf import LastStepLSTM

    m = _tc(**cfg)
    e = m.encoder
    m.encoder = LastStepLSTM(e.input_size, e.hidden_size, batch_first=True, bidirectional=False)
    return m


def tg_bias_rows_swapped(**cfg):
    """A GRU loader that puts Keras' bias[0] (input) into bias_hh and bias[1] (recurrent) into bias_ih."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith("bias_ih"):
            other = prefix + name.replace("bias_ih", "bias_hh")
            sd[prefix + name], sd[other] = sd[other], t

    _rnn_load_hook(m.encoder, edit)
    return m


def tg_last_step_sequence_end(**cfg):
    return _tc(**cfg, last="sequence_end")


def tg_bias_gates_unconverted(**cfg):
    """GRU kernels reordered z,r,h -> r,z,n but the biases copied in Keras' order."""
    m = _tc(**cfg)

    def edit(name, t, sd, prefix):
        if name.startswith(("bias_ih", "bias_hh")):
            sd[prefix + name] = _reorder_blocks(t, (1, 0, 2))

    _rnn_load_hook(m.encoder, edit)
    return m


def tf_layernorm_no_affine(**cfg):
    """nn.LayerNorm(elementwise_affine=False) for a LayerNormalization with center/scale."""
    from torch import nn

    m = _tf(**cfg)
    m.attn_norm = nn.LayerNorm(m.attn_norm.normalized_shape, eps=m.attn_norm.eps, elementwise_affine=False)
    return m


def tf_layernorm_over_sequence(**cfg):
    """nn.LayerNorm([L, d]): normalises over time and features where Keras normalises the last axis."""
    from torch import nn

    m = _tf(**cfg)
    m.attn_norm = nn.LayerNorm([cfg.get("seq_len", 10), cfg.get("d_model", 16)], eps=m.attn_norm.eps)
    return m


def tf_gelu_torch_exact(**cfg):
    """nn.GELU() (exact 1/sqrt(2)) where Keras on TensorFlow uses 1/sqrt(2) rounded to float32."""
    from torch import nn

    m = _tf(**cfg)
    m.ffn_gelu = nn.GELU()
    return m


def tf_ffn_relu(**cfg):
    """ReLU in the MLP for Keras' gelu."""
    from torch import nn

    m = _tf(**cfg)
    m.ffn_gelu = nn.ReLU()
    return m


def tf_key_value_swapped(**cfg):
    """A loader that maps Keras' key kernel to v_proj and value to k_proj."""
    m = _tf(**cfg)
    state = {"done": False}

    def hook(mod, sd, prefix, *args):
        if not state["done"]:
            state["done"] = True
            for p in ("weight", "bias"):
                k, v = prefix + f"k_proj.{p}", prefix + f"v_proj.{p}"
                sd[k], sd[v] = sd[v], sd[k]

    m.attention.register_load_state_dict_pre_hook(hook)
    return m


def tf_four_heads(**cfg):
    """num_heads=4 for Keras' 2 (same weights, other head split)."""
    return _tf(**{**cfg, "num_heads": 4})


def ed_transpose_padding_1_0(**cfg):
    """nn.ConvTranspose2d(k=3, s=2, padding=1) without output_padding: one pixel short."""
    from torch import nn

    w = cfg.get("width", 8)
    return _ed(**cfg, transpose=nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1))


def tf_attention_scaled_by_embed_dim(**cfg):
    """Scores scaled by 1/sqrt(d_model) (the whole embedding) instead of 1/sqrt(head_dim)."""
    import math

    return _tf(**cfg, attention_scale=1.0 / math.sqrt(cfg.get("d_model", 16)))


def tc_classifier_no_bias(**cfg):
    """nn.Linear(bias=False) for a Dense with a bias."""
    from torch import nn

    m = _tc(**cfg)
    m.classifier = nn.Linear(m.classifier.in_features, m.classifier.out_features, bias=False)
    return m


def tg_padding_idx(**cfg):
    return _tc(**cfg, padding_idx=0)


# ==== seqconv (1-D convolution) ======================================================================================
def sc_causal_as_symmetric(**cfg):
    """Conv1d(padding=2) (symmetric) for Keras' causal padding: each output sees two future steps."""
    from ported_torch.seqconv import ConvReLU1d, sequence_cnn

    return sequence_cnn(**cfg, conv1=ConvReLU1d(cfg.get("channels", 4), cfg.get("filters", 8), 5, padding=2))


def sc_dilation_dropped(**cfg):
    """The dilated Conv1D ported without dilation."""
    from ported_torch.seqconv import ConvReLU1d, sequence_cnn

    m = sequence_cnn(**cfg)
    c = m.conv2
    m.conv2 = ConvReLU1d(c.in_channels, c.out_channels, 4, padding="same")
    return m


# ==== rnnback (recurrent: go_backwards, user pairs of reference_keras/rnn_variants.py) ============================
RNNBACK_GRU_REF = "reference_keras.rnn_variants:backwards_gru"
RNNBACK_LSTM_REF = "reference_keras.rnn_variants:backwards_lstm_sequence"


def rb_go_backwards_ignored(**cfg):
    """GRU(go_backwards=True) ported as nn.GRU reading the sequence from its start (no x.flip(1))."""
    from ported_torch.rnn_variants import backwards_gru

    return backwards_gru(**cfg, flip_input=False)


def rb_go_backwards_output_flipped_back(**cfg):
    """LSTM(go_backwards=True, return_sequences=True) whose outputs the port flips back to input order (what
    Bidirectional does to its backward half; Keras returns a go_backwards layer's outputs as computed)."""
    from ported_torch.rnn_variants import backwards_lstm_sequence

    return backwards_lstm_sequence(**cfg, flip_output=True)


# ==== volume (3-D convolution: user pairs of reference_keras/volume.py and ported_torch/volume.py) ===============
VOLUME_REF = "reference_keras.volume:volume_cnn"
VOLUME_POOLED_REF = "reference_keras.volume:volume_cnn_pooled"


def v3_conv_symmetric_pad(**cfg):
    """The stride-2 'same' Conv3D as nn.Conv3d(padding=1): TF pads (0, 1) per even axis, this pads (1, 1)."""
    from torch import nn

    from ported_torch.volume import volume_cnn

    m = volume_cnn(**cfg)
    c = m.conv2
    m.conv2 = nn.Conv3d(c.in_channels, c.out_channels, 3, stride=2, padding=1)
    return m


def v3_kernel_dh_swapped(**cfg):
    """A user's loader that converts the Conv3D kernel with kernel.transpose(4, 3, 1, 0, 2) (kd and kh swapped):
    applied to conv1's weight on every load."""
    from ported_torch.volume import volume_cnn

    m = volume_cnn(**cfg)

    def hook(module, state_dict, prefix, *args):
        key = prefix + "weight"
        if key in state_dict:
            state_dict[key] = state_dict[key].permute(0, 1, 3, 2, 4).contiguous()

    m.conv1.register_load_state_dict_pre_hook(hook)
    return m


def v3_pool_valid(**cfg):
    """MaxPooling3D(3, 2, padding='same') ported as nn.MaxPool3d(3, 2) ('valid': the last window is dropped)."""
    from torch import nn

    from ported_torch.volume import volume_cnn_pooled

    m = volume_cnn_pooled(**cfg)
    m.pool = nn.MaxPool3d(3, 2)
    return m


def v3_pool_symmetric(**cfg):
    """MaxPooling3D(3, 2, padding='same') ported as nn.MaxPool3d(3, 2, padding=1): symmetric, TF pads (0, 1)."""
    from torch import nn

    from ported_torch.volume import volume_cnn_pooled

    m = volume_cnn_pooled(**cfg)
    m.pool = nn.MaxPool3d(3, 2, padding=1)
    return m


# ==== seq1d (1-D layers beyond Conv1D: user pairs of reference_keras/seq1d.py and ported_torch/seq1d.py) ===========
SEQ1D_REF = "reference_keras.seq1d:seq1d_net"


def s1_strided_same_symmetric(**cfg):
    """The stride-2 'same' Conv1D as nn.Conv1d(padding=1): TF pads (0, 1) on the even length, this pads (1, 1)."""
    from torch import nn

    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    c = m.conv_s2
    m.conv_s2 = nn.Conv1d(c.in_channels, c.out_channels, 3, stride=2, padding=1)
    return m


def s1_depthwise_multiplier_major(**cfg):
    """A user's loader that reads the DepthwiseConv1D kernel (k, in, mult) as (k, mult, in): the port's output
    channel m * in + c gets Keras' channel c * mult + m (applied to dw's weight and bias on every load)."""
    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    cin = m.dw.in_channels
    mult = m.dw.out_channels // cin

    def hook(module, state_dict, prefix, *args):
        for name in ("weight", "bias"):
            key = prefix + name
            if key in state_dict:
                t = state_dict[key]
                state_dict[key] = t.reshape(cin, mult, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()

    m.dw.register_load_state_dict_pre_hook(hook)
    return m


def s1_separable_multiplier_major(**cfg):
    """The SeparableConv1D's depthwise kernel (k, in, mult) read as (k, mult, in) by the user's loader."""
    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    cin = m.sep_depthwise.in_channels
    mult = m.sep_depthwise.out_channels // cin

    def hook(module, state_dict, prefix, *args):
        key = prefix + "weight"
        if key in state_dict:
            t = state_dict[key]
            state_dict[key] = t.reshape(cin, mult, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()

    m.sep_depthwise.register_load_state_dict_pre_hook(hook)
    return m


def s1_grouped_as_dense(**cfg):
    """Conv1D(groups=3) ported as an ungrouped nn.Conv1d."""
    from torch import nn

    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    g = m.grouped
    m.grouped = nn.Conv1d(g.in_channels, g.out_channels, 3, padding=1)
    return m


def s1_transpose_output_padding(**cfg):
    """The kernel-4 stride-2 'same' Conv1DTranspose as ConvTranspose1d(padding=1, output_padding=1) (the k=3
    recipe): one step too long."""
    from torch import nn

    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    t = m.tconv
    m.tconv = nn.ConvTranspose1d(t.in_channels, t.out_channels, 4, stride=2, padding=1, output_padding=1)
    return m


def s1_upsample_linear(**cfg):
    """UpSampling1D(2) as nn.Upsample(scale_factor=2, mode='linear'): Keras repeats each step."""
    from torch import nn

    from ported_torch.seq1d import seq1d_net

    m = seq1d_net(**cfg)
    m.up = nn.Upsample(scale_factor=2, mode="linear")
    return m


# ==== decoder (causal self-attention: user pairs of reference_keras/decoder.py and ported_torch/decoder.py) ==========
DECODER_REF = "reference_keras.decoder:decoder_block"


def dc_mask_missing(**cfg):
    """nn.MultiheadAttention called without attn_mask: every position attends to the future."""
    from ported_torch.decoder import decoder_block

    return decoder_block(mask=None, **cfg)


def dc_mask_polarity_bool(**cfg):
    """Keras' causal mask (tril, True = attend) given to torch as attn_mask (True = masked): the last row is all
    masked (NaN)."""
    from ported_torch.decoder import decoder_block

    return decoder_block(mask="tril", **cfg)


def dc_mask_polarity_fill(**cfg):
    """Hand-written scores.masked_fill(tril == 1, -1e9): the allowed positions masked (finite: -1e9)."""
    from ported_torch.decoder import KERAS_MASKED_SCORE, decoder_masked_fill

    return decoder_masked_fill(mask="inverted", mask_fill=KERAS_MASKED_SCORE, **cfg)


def dc_mask_after_softmax(**cfg):
    """The probabilities zeroed above the diagonal after the softmax (rows no longer sum to 1)."""
    from ported_torch.decoder import decoder_masked_fill

    return decoder_masked_fill(mask_after_softmax=True, **cfg)


def dc_causal_diagonal(**cfg):
    """attn_mask=torch.triu(ones) without diagonal=1: each position masked from itself too (row 0 NaN)."""
    from ported_torch.decoder import decoder_block

    return decoder_block(mask="triu0", **cfg)


def dc_sdpa_not_causal(**cfg):
    """F.scaled_dot_product_attention without is_causal=True."""
    from ported_torch.decoder import decoder_sdpa

    return decoder_sdpa(mask=None, **cfg)


# ==== seq2seq (LSTM return_state=True -> decoder initial_state: user pair) ====
SEQ2SEQ_REF = "reference_keras.seq2seq:seq2seq"


def s2_states_swapped(**cfg):
    """The encoder's states passed to the decoder as (c, h)."""
    from ported_torch.seq2seq import seq2seq

    return seq2seq(state="swapped", **cfg)


def s2_states_not_passed(**cfg):
    """The decoder started from zeros: the encoder's (h, c) never passed."""
    from ported_torch.seq2seq import seq2seq

    return seq2seq(state="none", **cfg)


# ==== keypoints ==================================================================================================
def _kp(**cfg):
    from ported_torch.keypoints import keypoints_cnn

    return keypoints_cnn(**cfg)


def kp_flatten_hwc(**cfg):
    """A flatten written "like Keras" (HWC) in a port whose fc1 weights are converted for nn.Flatten's CHW."""
    from ported_torch.layers import FlattenHWC

    m = _kp(**cfg)
    m.flatten = FlattenHWC()
    return m


def kp_fc2_reshaped(**cfg):
    m = _kp(**cfg)
    _reshape_not_transpose_on_load(m.fc2)
    return m


def kp_fc2_no_bias(**cfg):
    from torch import nn

    m = _kp(**cfg)
    m.fc2 = nn.Linear(m.fc2.in_features, m.fc2.out_features, bias=False)
    return m


# ==== goturn =====================================================================================================
def gt_lrn_alpha_times_size(**cfg):
    """``nn.LocalResponseNorm(5, alpha=5e-4)``: alpha multiplied by the size (torch divides it already)."""
    from parity.pairs.goturn import CAFFE_LRN_ALPHA, CAFFE_LRN_SIZE
    from ported_torch.goturn import goturn

    return goturn(**cfg, lrn_alpha=CAFFE_LRN_ALPHA * CAFFE_LRN_SIZE)


def gt_relu6(**cfg):
    from torch import nn

    from ported_torch.goturn import goturn

    m = goturn(**cfg)
    m.target.relu1 = nn.ReLU6()
    return m


def gt_floor_pool(**cfg):
    from ported_torch.goturn import goturn

    return goturn(**cfg, ceil_mode=False)


def gt_conv2_groups1(**cfg):
    from torch import nn

    from ported_torch.goturn import goturn

    m = goturn(**cfg)
    c = m.target.conv2
    m.target.conv2 = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                               groups=1)
    return m


def gt_dropout_rate(**cfg):
    """Caffe's dropout_ratio 0.5 kept in the port while the (parity) reference uses 0."""
    from parity.pairs.goturn import GOTURN_DROPOUT_RATIO
    from ported_torch.goturn import goturn

    return goturn(**dict(cfg, dropout=GOTURN_DROPOUT_RATIO))


def gt_fc6_reshaped(**cfg):
    from ported_torch.goturn import goturn

    m = goturn(**cfg)
    _reshape_not_transpose_on_load(m.fc6)
    return m


# ==== xception =====================================================================================================
def xc_shared_middle(**cfg):
    from ported_torch.xception import xception

    return xception(**cfg, shared_middle=True)


def xc_symmetric_pool(**cfg):
    from ported_torch.xception import xception

    return xception(**cfg, symmetric_pool=True)


def xc_missing_bn(**cfg):
    from ported_torch.xception import xception

    return xception(**cfg, missing_bn=True)


# ==== optimizers configured the user's way ==========================================================================
class PlainEpsAdam(AdamAdapter):
    """``torch.optim.Adam(params, lr, betas, eps=<the Keras epsilon>)``: eps added to the bias-corrected
    sqrt(v), where Keras adds it to the uncorrected one."""

    kind = "adam_plain_eps"
    rules = ("torch.optim.Adam(eps=keras epsilon) as is (a user's port)",)

    def torch_optimizer(self, spec, refs, l2):
        import torch

        return torch.optim.Adam(torch_param_groups(spec, refs, l2), lr=spec.lr, betas=(spec.beta_1, spec.beta_2),
                                eps=spec.epsilon)

    def torch_prepare(self, spec, step, opt):
        for group in opt.param_groups:
            group["lr"] = spec.lr_at(step) * group.get("lr_mult", 1.0)
            group["eps"] = spec.epsilon


class L2AsLambdaSGD(SGDAdapter):
    """Keras ``l2(0.01)`` given to torch as ``weight_decay=0.01`` (should be 2 * 0.01)."""

    kind = "sgd_l2_as_lambda"

    def torch_optimizer(self, spec, refs, l2):
        halved = {k: v / 2.0 for k, v in l2.items()}  # torch_param_groups doubles: lam/2 * 2 = lam
        return super().torch_optimizer(spec, refs, halved)


class NoL2SGD(SGDAdapter):
    """The port's optimizer forgets the Keras kernel regularisers."""

    kind = "sgd_without_l2"

    def torch_optimizer(self, spec, refs, l2):
        return super().torch_optimizer(spec, refs, {})


class CaffeSGDWithoutMultipliers(CaffeSGDAdapter):
    """The port's Caffe SGD lost the solver's per-layer ``lr_mult`` / ``decay_mult`` (frozen convs train, fc
    layers learn 10-20x too slowly)."""

    kind = "caffe_sgd_no_lr_mult"

    def torch_optimizer(self, spec, refs, l2):
        return super().torch_optimizer(dataclasses.replace(spec, lr_mult={}, decay_mult={}), refs, l2)


class CaffeSGDAsTorchSGD(CaffeSGDAdapter):
    """The naive GOTURN port: ``torch.optim.SGD`` with one group per layer, ``lr = base_lr * lr_mult`` and
    ``weight_decay = wd * decay_mult``. Equal to Caffe's SGD while the learning rate is constant; after an lr
    change torch applies the new lr to the whole momentum buffer (``buf = mu*buf + g; w -= lr*buf``), Caffe
    keeps each step's lr inside its history (``h = mu*h + lr*g; w -= h``)."""

    kind = "caffe_sgd_as_torch_sgd"

    def torch_optimizer(self, spec, refs, l2):
        import torch

        from parity.optim.adapters import l2_for, multiplier

        groups = [{"params": [r.param], "lr": spec.lr * multiplier(spec.lr_mult, r), "lr_mult": multiplier(spec.lr_mult, r),
                   "weight_decay": spec.weight_decay * multiplier(spec.decay_mult, r)
                   + torch_weight_decay_from_keras_l2(l2_for(spec, l2, r))} for r in refs]
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)

    def torch_prepare(self, spec, step, opt):
        for group in opt.param_groups:
            group["lr"] = spec.lr_at(step) * group["lr_mult"]

    def torch_slots(self, spec, step, opt, refs):
        # what such a port would call Caffe's history: lr * buf (equal to it while the lr is constant)
        out = {}
        for r in refs:
            buf = opt.state.get(r.param, {}).get("momentum_buffer")
            group = next(g for g in opt.param_groups if any(p is r.param for p in g["params"]))
            if buf is not None:
                out[r.key] = {"momentum": (group["lr"] * buf).detach().cpu().numpy()}
        return out


for _adapter in (PlainEpsAdam(), L2AsLambdaSGD(), NoL2SGD(), CaffeSGDWithoutMultipliers(), CaffeSGDAsTorchSGD()):
    register_adapter(_adapter)


def _optimizer_variant(kind: str, base: str | None = None) -> Callable[[PairSpec], OptimizerSpec]:
    def make(spec: PairSpec) -> OptimizerSpec:
        return dataclasses.replace(spec.optimizer_for(base), kind=kind)

    return make


def _port_loss(**kw) -> Callable[[PairSpec], PairSpec]:
    """The port trains with another loss configuration (needs ``PairSpec.port_loss``)."""

    def change(spec: PairSpec) -> PairSpec:
        return dataclasses.replace(spec, port_loss=dataclasses.replace(spec.loss, **kw))

    return change


def _has_port_loss() -> bool:
    return "port_loss" in {f.name for f in dataclasses.fields(PairSpec)} and \
        "label_smoothing" in {f.name for f in dataclasses.fields(LossSpec)}


# ==== the catalogue ================================================================================================
@dataclass(frozen=True)
class Mutation:
    """One planted bug and what parity should say about it."""

    name: str
    pair: str
    summary: str
    stage: str            # expected first stage
    path: str             # expected first divergent layer (tap path, or "loss")
    cause: str            # expected Finding.cause
    port: str | None = None
    optimizer: Callable[[PairSpec], OptimizerSpec] | None = None
    spec_change: Callable[[PairSpec], PairSpec] | None = None
    #: a user pair: (reference builder, port builder) as "module:function"
    user: tuple[str, str] | None = None
    #: stages a fast CI run may limit itself to (None: all)
    ci_stages: tuple[str, ...] | None = None
    needs: tuple[str, ...] = ()
    #: optimizer steps of the check (an lr change needs two)
    steps: int = 1
    #: the dtype the mutation must run in (None: the suite's); TF's 3-D pooling has no float64 kernel
    dtype: str | None = None


def _m(name, pair, summary, stage, path, cause, port=True, **kw) -> Mutation:
    return Mutation(name, pair, summary, stage, path, cause,
                    port=f"{MOD}:{name}" if port is True else port, **kw)


EVAL = ("structure", "forward_eval", "isolated")
TRAIN = ("structure", "forward_eval", "forward_train")
STEP = ("structure", "forward_eval", "forward_train", "gradients", "step")
GRADS = ("structure", "forward_eval", "forward_train", "gradients")

CATALOGUE: tuple[Mutation, ...] = (
    # --- minixception: BatchNorm ----------------------------------------------------------------------------------
    _m("mx_bn_eps_1e5", "minixception", "BatchNorm eps 1e-5 (torch default) everywhere", "forward_eval", "base/bn1",
       "bn_eps", ci_stages=EVAL),
    _m("mx_bn_eps_one_layer", "minixception", "one BatchNorm left at eps 1e-5", "forward_eval",
       "block2/sepconv1/bn", "bn_eps", ci_stages=EVAL),
    _m("mx_bn_momentum_keras_value", "minixception", "BN momentum 0.99 passed to torch as is", "forward_train",
       "base/bn1", "bn_momentum", ci_stages=TRAIN),
    _m("mx_bn_momentum_torch_default", "minixception", "torch default BN momentum 0.1", "forward_train",
       "base/bn1", "bn_momentum", ci_stages=TRAIN),
    _m("mx_bn_affine_off", "minixception", "BatchNorm2d(affine=False)", "forward_eval", "base/bn1", "bn_affine",
       ci_stages=EVAL),
    _m("mx_missing_bn", "minixception", "a BatchNorm replaced by nn.Identity", "forward_eval", "block1/sepconv1/bn",
       "missing_bn", ci_stages=EVAL),
    _m("mx_running_var_biased", "minixception", "hand-written BN storing the biased batch variance",
       "forward_train", "base/bn1", "running_var_bias", ci_stages=TRAIN),
    _m("mx_bn_frozen_in_train", "minixception", "train() keeps every BatchNorm in eval mode", "forward_train",
       "base/bn1", "train_eval_mode", ci_stages=TRAIN),
    # --- minixception: layers and wiring --------------------------------------------------------------------------
    _m("mx_symmetric_pool", "minixception", "nn.MaxPool2d(3, 2, padding=1) for TF 'same'", "forward_eval",
       "block1/pool", "symmetric_pool", ci_stages=EVAL),
    _m("mx_conv_bias", "minixception", "conv bias in the port only", "forward_eval", "base/conv1", "conv_bias",
       ci_stages=EVAL),
    _m("mx_relu_before_bn", "minixception", "ReLU before BatchNorm (wrong layer order)", "forward_eval", "base/bn1",
       "layer_order", ci_stages=EVAL),
    _m("mx_extra_relu_on_shortcut", "minixception", "an extra ReLU on a residual branch", "forward_eval",
       "block1/add", "forward_wiring", ci_stages=EVAL),
    # activations stay below 6 here (max 1.0 at block4/sepconv1/relu): caught by the structure stage alone
    _m("mx_relu6", "minixception", "ReLU6 where the reference has ReLU (never clips on this data)", "structure",
       "block4/sepconv1/relu", "activation", ci_stages=EVAL),
    _m("mx_leaky_relu", "minixception", "LeakyReLU(0.01) where the reference has ReLU", "forward_eval",
       "base/relu1", "activation", ci_stages=EVAL),
    _m("mx_missing_relu", "minixception", "a ReLU replaced by nn.Identity", "forward_eval",
       "block1/sepconv1/relu", "activation", ci_stages=EVAL),
    _m("mx_head_no_bias", "minixception", "head conv without its bias", "forward_eval", "head/conv", "conv_bias",
       ci_stages=EVAL),
    _m("mx_head_stride2", "minixception", "stride 2 on the head conv", "forward_eval", "head/conv", "stride",
       ci_stages=EVAL),
    _m("mx_dilation2", "minixception", "dilation 2 on a base conv", "forward_eval", "base/conv2", "dilation",
       ci_stages=EVAL),
    _m("mx_pool_kernel2", "minixception", "max-pool 2x2 where the reference pools 3x3", "forward_eval",
       "block2/pool", "kernel_size", ci_stages=EVAL),
    _m("mx_head_kernel1", "minixception", "1x1 head conv where the reference has 3x3", "forward_eval", "head/conv",
       "kernel_size", ci_stages=EVAL),
    _m("mx_softmax_output", "minixception", "softmax in the model and in CrossEntropyLoss", "forward_eval",
       "predictions", "double_softmax", ci_stages=EVAL),
    _m("mx_dropout_in_eval", "minixception", "F.dropout(x, 0.5) left on in eval", "forward_eval", "head/conv",
       "train_eval_mode", ci_stages=EVAL),
    _m("mx_init_after_load", "minixception", "reset_parameters() after the weights were loaded", "forward_eval",
       "base/conv2", "init_after_load", ci_stages=EVAL),
    # --- minixception: optimizer and loss -------------------------------------------------------------------------
    _m("mx_l2_as_lambda", "minixception", "Keras l2(0.01) as torch weight_decay=0.01 (should be 0.02)", "step",
       "base/conv1", "l2_weight_decay", port=None, optimizer=_optimizer_variant("sgd_l2_as_lambda"), ci_stages=STEP),
    _m("mx_l2_dropped", "minixception", "Keras l2 regularisers not carried over to torch", "step", "base/conv1",
       "l2_weight_decay", port=None, optimizer=_optimizer_variant("sgd_without_l2"), ci_stages=STEP),
    _m("mx_adam_plain_eps", "minixception", "torch.optim.Adam(eps=Keras epsilon) as is", "step", "base/conv1",
       "adam_epsilon", port=None, optimizer=_optimizer_variant("adam_plain_eps", "adam"), ci_stages=STEP),
    _m("mx_loss_sum", "minixception", "the port's loss sums over the batch (reduction='sum')", "gradients", "loss",
       "loss_reduction", port=None, spec_change=_port_loss(reduction="sum"), ci_stages=GRADS, needs=("port_loss",)),
    _m("mx_label_smoothing", "minixception", "label_smoothing=0.1 in the port's loss only", "gradients", "loss",
       "label_smoothing", port=None, spec_change=_port_loss(label_smoothing=0.1), ci_stages=GRADS,
       needs=("port_loss",)),
    # --- keypoints ------------------------------------------------------------------------------------------------
    _m("kp_flatten_hwc", "keypoints", "HWC flatten in a port converted for nn.Flatten's CHW", "forward_eval",
       "flatten", "flatten_order", ci_stages=EVAL),
    _m("kp_fc2_reshaped", "keypoints", "Dense kernel reshaped, not transposed, by the loader", "forward_eval", "fc2",
       "dense_layout", ci_stages=EVAL),
    # keypoints keeps Keras' zero biases (randomize_bn=False): a missing bias is invisible in the numbers
    _m("kp_fc2_no_bias", "keypoints", "nn.Linear(bias=False) where Dense has a (zero) bias", "structure", "fc2",
       "conv_bias", ci_stages=EVAL),
    # --- goturn ---------------------------------------------------------------------------------------------------
    _m("gt_lrn_alpha_times_size", "goturn", "LRN alpha multiplied by the window size", "forward_eval",
       "target/norm1", "lrn", ci_stages=EVAL),
    _m("gt_relu6", "goturn", "ReLU6 where the reference has ReLU (clips: conv1 outputs reach the hundreds)",
       "forward_eval", "target/relu1", "activation", ci_stages=EVAL),
    _m("gt_floor_pool", "goturn", "floor pooling (ceil_mode=False) where Caffe rounds up", "forward_eval",
       "target/pool1", "pool_rounding", ci_stages=EVAL),
    _m("gt_conv2_groups1", "goturn", "conv2 with groups=1 (Caffe group: 2)", "forward_eval", "target/conv2",
       "groups", ci_stages=EVAL),
    _m("gt_dropout_rate", "goturn", "dropout 0.5 in the port, 0 in the reference", "forward_train", "drop6",
       "dropout_rate", ci_stages=TRAIN),
    _m("gt_fc6_reshaped", "goturn", "fc6 kernel reshaped, not transposed, by the loader", "forward_eval", "fc6",
       "dense_layout", ci_stages=EVAL),
    _m("gt_lr_mult_dropped", "goturn", "the port's Caffe SGD without the solver's lr_mult / decay_mult", "step",
       "target/conv1", "lr_mult", port=None, optimizer=_optimizer_variant("caffe_sgd_no_lr_mult"), ci_stages=STEP),
    _m("gt_torch_sgd_lr_step", "goturn", "torch.optim.SGD (lr*lr_mult groups) where the solver is Caffe SGD, "
       "across an lr step", "step", "fc6", "lr_in_momentum", port=None,
       optimizer=_optimizer_variant("caffe_sgd_as_torch_sgd", "caffe_sgd_lr_step"), ci_stages=STEP, steps=2),
    # --- xception -------------------------------------------------------------------------------------------------
    _m("xc_shared_middle", "xception", "middle flow as nn.ModuleList([MiddleBlock()] * 8)", "forward_eval",
       "middle/block5/sepconv1", "shared_module", ci_stages=EVAL),
    _m("xc_symmetric_pool", "xception", "nn.MaxPool2d(3, 2, padding=1) for TF 'same'", "forward_eval",
       "entry/block3/pool", "symmetric_pool", ci_stages=EVAL),
    _m("xc_missing_bn", "xception", "a BatchNorm missing after a separable conv", "forward_eval",
       "entry/block3/sepconv2/bn", "missing_bn", ci_stages=EVAL),
    # --- textclf / textgru: recurrent and embedding -----------------------------------------------------------------
    _m("tc_batch_first_missing", "textclf", "nn.LSTM batch_first=False fed (N, L, C)", "forward_eval", "encoder",
       "batch_first", ci_stages=EVAL),
    _m("tc_last_step_sequence_end", "textclf", "backward direction taken at the last step", "forward_eval",
       "encoder", "rnn_last_step", ci_stages=EVAL),
    _m("tc_bias_duplicated", "textclf", "Keras bias copied into bias_ih and bias_hh", "forward_eval", "encoder",
       "rnn_bias_duplicated", ci_stages=EVAL),
    _m("tc_bias_dropped", "textclf", "LSTM bias not transferred", "forward_eval", "encoder", "rnn_bias_dropped",
       ci_stages=EVAL),
    _m("tc_gate_order_icfo", "textclf", "LSTM gates loaded in TF LSTMBlockCell order i,c,f,o", "forward_eval",
       "encoder", "rnn_gate_order", ci_stages=EVAL),
    # one step compares bias_ih (Keras' bias) only; the second trainable bias is a structure finding
    _m("tc_bias_hh_trained", "textclf", "bias_hh left trainable (effective bias moves twice)", "structure",
       "encoder", "rnn_two_biases", ci_stages=STEP),
    _m("tc_padding_idx", "textclf", "nn.Embedding(padding_idx=0) where Keras trains row 0", "gradients",
       "embedding", "padding_idx", ci_stages=GRADS),
    _m("tm_mask_ignored", "textmask", "mask_zero=True ported without packing (LSTM runs over padding)",
       "forward_eval", "encoder", "mask_zero_ignored", ci_stages=EVAL),
    _m("tm_pre_padding_lengths", "textmask", "lengths packed as if pre-padded (post-padded inputs)",
       "forward_eval", "encoder", "mask_zero_ignored", ci_stages=EVAL),
    _m("tm_padding_idx_no_pack", "textmask", "padding_idx=0 for mask_zero=True, no packing", "forward_eval",
       "encoder", "mask_zero_ignored", ci_stages=EVAL),
    _m("tg_gate_order_unconverted", "textgru", "GRU gates copied in Keras order z,r,h", "forward_eval", "encoder",
       "rnn_gate_order", ci_stages=EVAL),
    _m("tg_batch_first_missing", "textgru", "nn.GRU batch_first=False fed (N, L, C)", "forward_eval", "encoder",
       "batch_first", ci_stages=EVAL),
    # --- transformer: attention, layer normalisation, gelu -------------------------------------------------------
    _m("tf_layernorm_eps_torch_default", "transformer", "nn.LayerNorm eps 1e-5 (torch default)", "forward_eval",
       "attn_norm", "layernorm_eps", ci_stages=EVAL),
    _m("tf_gelu_tanh", "transformer", "nn.GELU(approximate='tanh') for Keras' erf gelu", "forward_eval", "ffn_gelu",
       "gelu_approximate", ci_stages=EVAL),
    _m("tf_attention_unscaled", "transformer", "attention scores not scaled by 1/sqrt(head_dim)", "forward_eval",
       "attention", "attention_scale", ci_stages=EVAL),
    _m("tf_query_key_swapped", "transformer", "query and key projections swapped on load", "forward_eval",
       "attention", "attention_qkv_order", ci_stages=EVAL),
    _m("tf_heads_flattened_wrong", "transformer", "per-head query kernel flattened (k, h)", "forward_eval",
       "attention", "attention_head_layout", ci_stages=EVAL),
    _m("tf_pre_norm", "transformer", "pre-norm block for a post-norm reference", "forward_eval", "attention",
       "forward_wiring", ci_stages=EVAL),
    # --- encdec: transposed conv, up-sampling, skip concatenation ----------------------------------------------------
    _m("ed_transpose_padding_1_1", "encdec", "ConvTranspose2d(padding=1, output_padding=1) for 'same' (k=3, s=2)",
       "forward_eval", "up1", "conv_transpose_same", ci_stages=EVAL),
    _m("ed_upsample_bilinear", "encdec", "bilinear up-sampling for Keras' nearest", "forward_eval", "up2",
       "upsample_mode", ci_stages=EVAL),
    _m("ed_skip_reversed", "encdec", "skip concatenation in the other order", "forward_eval", "skip2",
       "forward_wiring", ci_stages=EVAL),
    _m("ed_transpose_kernel_flipped", "encdec", "transposed-conv kernel rotated 180 degrees on load",
       "forward_eval", "up1", "conv_transpose_flipped", ci_stages=EVAL),
    # --- more recurrent, transformer and encoder-decoder mistakes ---------------------------------------------------
    _m("tc_forget_bias_plus_one", "textclf", "TF 1 forget_bias=1.0 added to the loaded bias", "forward_eval",
       "encoder", "rnn_forget_bias", ci_stages=EVAL),
    _m("tc_gate_order_ifog", "textclf", "LSTM gates loaded as i,f,o,g", "forward_eval", "encoder", "rnn_gate_order",
       ci_stages=EVAL),
    _m("tc_softmax_output", "textclf", "softmax in the port and in F.cross_entropy", "forward_eval", "classifier",
       "double_softmax", ci_stages=EVAL),
    _m("tc_unidirectional", "textclf", "nn.LSTM without bidirectional=True", "forward_eval", "encoder",
       "bidirectional", ci_stages=EVAL),
    _m("tg_bias_rows_swapped", "textgru", "GRU input and recurrent biases swapped on load", "forward_eval",
       "encoder", "gru_bias_swapped", ci_stages=EVAL),
    _m("tg_last_step_sequence_end", "textgru", "backward GRU taken at the last step", "forward_eval", "encoder",
       "rnn_last_step", ci_stages=EVAL),
    _m("tg_bias_gates_unconverted", "textgru", "GRU biases left in Keras' z,r,h order", "forward_eval", "encoder",
       "rnn_gate_order", ci_stages=EVAL),
    _m("tf_layernorm_no_affine", "transformer", "LayerNorm without gamma/beta", "structure", "attn_norm",
       "layernorm_affine", ci_stages=EVAL),
    _m("tf_layernorm_over_sequence", "transformer", "nn.LayerNorm([L, d]) for Keras' last axis", "forward_eval",
       "attn_norm", "layernorm_axes", ci_stages=EVAL),
    _m("tf_gelu_torch_exact", "transformer", "nn.GELU with the exact 1/sqrt(2) (TF: float32-rounded)",
       "forward_eval", "ffn_gelu", "activation_definition", ci_stages=EVAL),
    _m("tf_ffn_relu", "transformer", "ReLU in the MLP for gelu", "forward_eval", "ffn_gelu", "activation",
       ci_stages=EVAL),
    _m("tf_key_value_swapped", "transformer", "key and value projections swapped on load", "forward_eval",
       "attention", "attention_qkv_order", ci_stages=EVAL),
    _m("tf_four_heads", "transformer", "num_heads=4 for the reference's 2", "forward_eval", "attention",
       "attention_heads", ci_stages=EVAL),
    _m("ed_transpose_padding_1_0", "encdec", "ConvTranspose2d(padding=1) for 'same': one pixel short",
       "forward_eval", "up1", "conv_transpose_same", ci_stages=EVAL),
    _m("tf_attention_scaled_by_embed_dim", "transformer", "scores scaled by 1/sqrt(d_model), not 1/sqrt(head_dim)",
       "forward_eval", "attention", "attention_scale", ci_stages=EVAL),
    _m("tc_classifier_no_bias", "textclf", "nn.Linear(bias=False) for a Dense with a bias", "forward_eval",
       "classifier", "conv_bias", ci_stages=EVAL),
    _m("tg_padding_idx", "textgru", "nn.Embedding(padding_idx=0) where Keras trains row 0", "gradients",
       "embedding", "padding_idx", ci_stages=GRADS),
    # a GRU's bias_hh is Keras' bias[1] (trained): these show only in bias_hh's gradient, the forward is exact
    _m("tg_bias_hh_frozen", "textgru", "GRU bias_hh frozen like an LSTM's (Keras trains bias[1])", "gradients",
       "encoder", "gru_bias_hh_frozen", ci_stages=GRADS),
    _m("tg_bias_hh_detached", "textgru", "GRU bias_hh read detached (no gradient reaches it)", "gradients",
       "encoder", "gru_bias_hh_frozen", ci_stages=GRADS),
    # --- seqconv: 1-D convolution ------------------------------------------------------------------------------------
    _m("sc_causal_as_symmetric", "seqconv", "symmetric padding for Keras' causal Conv1D", "forward_eval", "conv1",
       "causal_padding", ci_stages=EVAL),
    _m("sc_dilation_dropped", "seqconv", "dilated Conv1D ported without dilation", "forward_eval", "conv2",
       "dilation", ci_stages=EVAL),
    # --- volume: 3-D convolution (user pairs, automatic alignment) ----------------------------------------------
    _m("v3_conv_symmetric_pad", "volume", "stride-2 'same' Conv3D as Conv3d(padding=1) (TF pads the extra cell after)",
       "forward_eval", "conv2", "conv_padding", port=None, user=(VOLUME_REF, f"{MOD}:v3_conv_symmetric_pad"),
       ci_stages=EVAL),
    _m("v3_kernel_dh_swapped", "volume", "Conv3D kernel loaded with kd and kh swapped", "forward_eval", "conv1",
       "conv_layout", port=None, user=(VOLUME_REF, f"{MOD}:v3_kernel_dh_swapped"), ci_stages=EVAL),
    _m("v3_pool_valid", "volume", "MaxPooling3D(padding='same') as MaxPool3d without padding", "forward_eval",
       "pool", "pool_padding", port=None, user=(VOLUME_POOLED_REF, f"{MOD}:v3_pool_valid"), ci_stages=EVAL,
       dtype="float32"),
    _m("v3_pool_symmetric", "volume", "MaxPooling3D(padding='same') as MaxPool3d(padding=1) (symmetric)",
       "forward_eval", "pool", "pool_padding", port=None, user=(VOLUME_POOLED_REF, f"{MOD}:v3_pool_symmetric"),
       ci_stages=EVAL, dtype="float32"),
    # --- seq1d: strided / depthwise / transposed 1-D convolution, up-sampling (user pairs, automatic alignment) ---
    _m("s1_strided_same_symmetric", "seq1d", "stride-2 'same' Conv1D as Conv1d(padding=1) (TF pads the extra step "
       "on the right)", "forward_eval", "conv_s2", "conv_padding", port=None,
       user=(SEQ1D_REF, f"{MOD}:s1_strided_same_symmetric"), ci_stages=EVAL),
    _m("s1_depthwise_multiplier_major", "seq1d", "DepthwiseConv1D kernel (k, in, mult) read as (k, mult, in)",
       "forward_eval", "dw", "depthwise_channel_order", port=None,
       user=(SEQ1D_REF, f"{MOD}:s1_depthwise_multiplier_major"), ci_stages=EVAL),
    _m("s1_separable_multiplier_major", "seq1d", "SeparableConv1D depthwise kernel read as (k, mult, in)",
       "forward_eval", "sep", "depthwise_channel_order", port=None,
       user=(SEQ1D_REF, f"{MOD}:s1_separable_multiplier_major"), ci_stages=EVAL),
    _m("s1_grouped_as_dense", "seq1d", "Conv1D(groups=3) ported as an ungrouped Conv1d", "forward_eval", "grouped",
       "groups", port=None, user=(SEQ1D_REF, f"{MOD}:s1_grouped_as_dense"), ci_stages=EVAL),
    _m("s1_transpose_output_padding", "seq1d", "'same' Conv1DTranspose (k 4, s 2) with output_padding=1",
       "forward_eval", "tconv", "conv_transpose_same", port=None,
       user=(SEQ1D_REF, f"{MOD}:s1_transpose_output_padding"), ci_stages=EVAL),
    _m("s1_upsample_linear", "seq1d", "UpSampling1D as nn.Upsample(mode='linear')", "forward_eval", "up",
       "upsample_mode", port=None, user=(SEQ1D_REF, f"{MOD}:s1_upsample_linear"), ci_stages=EVAL),
    # --- rnnback: recurrent go_backwards (user pairs, automatic alignment) ------------------------------------------
    _m("rb_go_backwards_ignored", "rnnback", "GRU(go_backwards=True) ported reading x from its start", "forward_eval",
       "rnn", "go_backwards", port=None, user=(RNNBACK_GRU_REF, f"{MOD}:rb_go_backwards_ignored"), ci_stages=EVAL),
    _m("rb_go_backwards_output_flipped_back", "rnnback", "go_backwards outputs flipped back to input order",
       "forward_eval", "rnn", "go_backwards", port=None,
       user=(RNNBACK_LSTM_REF, f"{MOD}:rb_go_backwards_output_flipped_back"), ci_stages=EVAL),
    # --- seq2seq: LSTM(return_state=True) states into a decoder's initial_state (user pair, two inputs) --------------
    _m("s2_states_swapped", "seq2seq", "encoder states passed to the decoder as (c, h)", "forward_eval", "decoder",
       "rnn_initial_state", port=None, user=(SEQ2SEQ_REF, f"{MOD}:s2_states_swapped"), ci_stages=EVAL),
    _m("s2_states_not_passed", "seq2seq", "decoder started from zeros (encoder states not passed)", "forward_eval",
       "decoder", "rnn_initial_state", port=None, user=(SEQ2SEQ_REF, f"{MOD}:s2_states_not_passed"), ci_stages=EVAL),
    # --- decoder: causal self-attention (user pairs, automatic alignment) -------------------------------------------
    _m("dc_mask_missing", "decoder", "nn.MultiheadAttention without the causal attn_mask", "forward_eval",
       "attention", "attention_causal_mask_missing", port=None, user=(DECODER_REF, f"{MOD}:dc_mask_missing"),
       ci_stages=EVAL),
    _m("dc_mask_polarity_bool", "decoder", "Keras' tril mask (True = attend) as torch's bool attn_mask (True = "
       "masked)", "forward_eval", "attention", "attention_mask_polarity", port=None,
       user=(DECODER_REF, f"{MOD}:dc_mask_polarity_bool"), ci_stages=EVAL),
    _m("dc_mask_polarity_fill", "decoder", "masked_fill(tril == 1, -1e9): the allowed positions masked",
       "forward_eval", "attention", "attention_mask_polarity", port=None,
       user=(DECODER_REF, f"{MOD}:dc_mask_polarity_fill"), ci_stages=EVAL),
    _m("dc_mask_after_softmax", "decoder", "causal mask applied to the probabilities after the softmax",
       "forward_eval", "attention", "attention_mask_after_softmax", port=None,
       user=(DECODER_REF, f"{MOD}:dc_mask_after_softmax"), ci_stages=EVAL),
    _m("dc_causal_diagonal", "decoder", "attn_mask=torch.triu(ones) (diagonal masked too)", "forward_eval",
       "attention", "attention_causal_offset", port=None, user=(DECODER_REF, f"{MOD}:dc_causal_diagonal"),
       ci_stages=EVAL),
    _m("dc_sdpa_not_causal", "decoder", "F.scaled_dot_product_attention without is_causal=True", "forward_eval",
       "attention", "attention_causal_mask_missing", port=None, user=(DECODER_REF, f"{MOD}:dc_sdpa_not_causal"),
       ci_stages=EVAL),
    # --- a user's own pair (automatic alignment) ------------------------------------------------------------------
    _m("user_symmetric_conv_pad", "user", "stride-2 conv with padding=1 where TF 'same' pads bottom/right",
       "forward_eval", "conv2", "conv_padding", port=None,
       user=("benchmarks.user_models:keras_cnn", "benchmarks.user_models:torch_cnn_symmetric_pad"), ci_stages=EVAL),
    _m("user_extra_dropout", "user", "an extra nn.Dropout(0.25) in the port only", "forward_train", "fc1",
       "train_eval_mode", port=None, user=("benchmarks.user_models:keras_cnn", "benchmarks.user_models:torch_cnn_extra_dropout"),
       ci_stages=TRAIN),
)

#: correct pairs for the false-alarm sweep: (pair, user builders or None)
CORRECT_PAIRS: tuple[tuple[str, tuple[str, str] | None], ...] = (
    ("minixception", None), ("keypoints", None), ("goturn", None), ("xception", None), ("textclf", None),
    ("textgru", None), ("textmask", None), ("transformer", None), ("encdec", None), ("seqconv", None),
    ("user", ("benchmarks.user_models:keras_cnn", "benchmarks.user_models:torch_cnn")),
    ("volume", (VOLUME_REF, "ported_torch.volume:volume_cnn")),
    ("seq1d", (SEQ1D_REF, "ported_torch.seq1d:seq1d_net")),
    ("decoder", (DECODER_REF, "ported_torch.decoder:decoder_block")),
    ("seq2seq", (SEQ2SEQ_REF, "ported_torch.seq2seq:seq2seq")),
    ("rnnback", (RNNBACK_GRU_REF, "ported_torch.rnn_variants:backwards_gru")),
    ("rnnback", (RNNBACK_LSTM_REF, "ported_torch.rnn_variants:backwards_lstm_sequence")),
)


MODEL_FAMILY = {
    "minixception": "separable CNN", "xception": "separable CNN", "keypoints": "plain CNN + dense",
    "goturn": "Caffe CNN (two streams)", "user": "user CNN", "textclf": "recurrent (LSTM)",
    "textgru": "recurrent (GRU)", "textmask": "recurrent (mask_zero)", "transformer": "attention", "encdec": "encoder-decoder (up-sampling)",
    "seqconv": "1-D convolution", "volume": "3-D convolution", "seq1d": "1-D convolution",
    "rnnback": "recurrent (go_backwards)", "decoder": "attention (causal mask)",
    "seq2seq": "recurrent (return_state)",
}
"""The model family each pair stands for: the suite reports its scores per family."""


def by_family(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """:func:`totals` per model family (:data:`MODEL_FAMILY`), in catalogue order."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(MODEL_FAMILY.get(o.pair, o.pair), []).append(o)
    return {fam: totals(os_) for fam, os_ in groups.items()}


def catalogue(pairs=None, names=None) -> list[Mutation]:
    out = []
    for m in CATALOGUE:
        if pairs and m.pair not in pairs:
            continue
        if names and m.name not in names:
            continue
        out.append(m)
    return out


def unavailable(m: Mutation) -> str | None:
    """Why a mutation cannot run here (a harness feature it needs is absent), else None."""
    if "port_loss" in m.needs and not _has_port_loss():
        return "needs PairSpec.port_loss / LossSpec.label_smoothing (per-side loss) in the harness"
    if m.pair not in ("user",) and m.user is None:
        from parity.pairs import registry

        if m.pair not in registry.names():
            return f"pair {m.pair!r} is not registered"
    return None


# ==== running and scoring ==========================================================================================
@dataclass
class Outcome:
    mutation: str
    pair: str
    expected: tuple[str, str, str]
    detected: bool
    stage: str | None
    path: str | None
    cause: str | None
    seconds: float
    error: str | None = None
    cause_message: str = ""

    @property
    def layer_ok(self) -> bool:
        return self.detected and (self.stage, self.path) == self.expected[:2]

    @property
    def cause_ok(self) -> bool:
        return self.detected and self.cause == self.expected[2]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(layer_ok=self.layer_ok, cause_ok=self.cause_ok)
        return d


def first_failure(result: CheckResult) -> tuple[str | None, str | None, Any]:
    """(stage, layer path, cause finding) of the first divergence as the CLI reports it."""
    fd = result.first_divergence
    if fd is None:
        return None, None, None
    stage, diff = fd
    if diff is not None:
        path = diff.path.split(":")[0].split("@")[0]
        return stage.name, path, result.cause_for(diff.path)
    errors = [f for f in result.findings if f.severity == "error"]
    path = errors[0].path if errors else None
    return stage.name, path, result.cause_for(path)


def spec_for(pair: str, user: tuple[str, str] | None = None) -> PairSpec:
    if pair == "user" or user is not None:
        from parity.user.pair import spec_from_user_models

        return spec_from_user_models(user[0], user[1], name="user-" + user[1].rsplit(":", 1)[-1])
    from parity.pairs import registry

    return registry.get(pair)


def run_mutation(m: Mutation, *, dtype: str = "float64", seed: int = 0, stages=None, fast: bool = True,
                 **check_kwargs) -> Outcome:
    """Run one mutation through :func:`parity.harness.check` and score it. ``stages``: ``"ci"`` for the
    mutation's reduced stage list, None for every stage (what the CLI runs)."""
    from parity.harness import check

    t0 = time.perf_counter()
    try:
        spec = spec_for(m.pair, m.user)
        if m.spec_change is not None:
            spec = m.spec_change(spec)
        opt = m.optimizer(spec) if m.optimizer is not None else None
        cfg = dict(spec.fast_config) if fast else {}
        st = m.ci_stages if stages == "ci" else stages
        check_kwargs.setdefault("steps", m.steps)
        result = check(spec, port=m.port, optimizer=opt, config=cfg, dtype=m.dtype or dtype, seed=seed, stages=st,
                       **check_kwargs)
    except Exception as exc:  # noqa: BLE001  (a crash is scored as not detected, with the reason)
        return Outcome(m.name, m.pair, (m.stage, m.path, m.cause), False, None, None, None,
                       time.perf_counter() - t0, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    stage, path, cause = first_failure(result)
    return Outcome(m.name, m.pair, (m.stage, m.path, m.cause), not result.passed, stage, path,
                   cause.cause if cause is not None else None, time.perf_counter() - t0,
                   cause_message=cause.message if cause is not None else "")


def run_correct(pair: str, user=None, *, dtype: str = "float64", seed: int = 0, fast: bool = True,
                **check_kwargs) -> tuple[bool, str, float]:
    """One false-alarm probe: the correct port of ``pair``. Returns (passed, summary line, seconds)."""
    from parity.harness import check

    t0 = time.perf_counter()
    try:
        spec = spec_for(pair, user)
        cfg = dict(spec.fast_config) if fast else {}
        result = check(spec, config=cfg, dtype=dtype, seed=seed, **check_kwargs)
    except Exception as exc:  # noqa: BLE001
        return False, f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", time.perf_counter() - t0
    return result.passed, result.summary_line(), time.perf_counter() - t0


def totals(outcomes: list[Outcome]) -> dict[str, Any]:
    n = len(outcomes)

    def pct(k):
        return 100.0 * k / n if n else math.nan

    d = sum(o.detected for o in outcomes)
    lay = sum(o.layer_ok for o in outcomes)
    cau = sum(o.cause_ok for o in outcomes)
    return {"mutations": n, "detected": d, "layer_ok": lay, "cause_ok": cau, "detected_pct": pct(d),
            "layer_pct": pct(lay), "cause_pct": pct(cau)}


__all__ = ["CATALOGUE", "CORRECT_PAIRS", "MODEL_FAMILY", "Mutation", "Outcome", "by_family", "catalogue", "first_failure", "run_correct",
           "run_mutation", "totals", "unavailable"]
