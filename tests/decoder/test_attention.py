"""Cross-attention: the folded short-context path equals plain attention (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch.decoder.attention import CrossAttention


def plain_cross_attention(attn: CrossAttention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The textbook computation: q/k/v projections, softmax(q·kᵀ·scale)·v, output projection, norm."""
    b, n, _ = x.shape
    m, h, dh = context.shape[1], attn.heads, attn.dim_head
    x = attn.norm(x)
    q = (x @ attn.to_q.weight.T).view(b, n, h, dh).transpose(1, 2)
    k, v = (context @ attn.to_kv.weight.T).chunk(2, dim=-1)
    k = torch.cat((attn.null_kv[0].expand(b, h, 1, dh), k.reshape(b, m, h, dh).transpose(1, 2)), dim=2)
    v = torch.cat((attn.null_kv[1].expand(b, h, 1, dh), v.reshape(b, m, h, dh).transpose(1, 2)), dim=2)
    if attn.cosine_sim:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, h * dh)
    return attn.to_out(out)


@pytest.mark.parametrize("context_len", [1, 6, 62, 63, 80])  # folded while context_len + 1 < dim_head (64)
def test_cross_attention_matches_plain_attention_with_gradients(context_len):
    torch.manual_seed(context_len)
    attn = CrossAttention(24, context_dim=40).double()
    x = torch.randn(3, 50, 24, dtype=torch.float64, requires_grad=True)
    context = torch.randn(3, context_len, 40, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 50, 24, dtype=torch.float64)

    ours = attn(x, context)
    grads = torch.autograd.grad((ours * weights).sum(), [x, context, *attn.parameters()])
    expected = plain_cross_attention(attn, x, context)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, context, *attn.parameters()])

    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    for name, g, e in zip(["x", "context", *(n for n, _ in attn.named_parameters())], grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_short_context_takes_the_folded_path_and_long_context_does_not(monkeypatch):
    attn = CrossAttention(16, context_dim=8, dim_head=8, heads=2)
    calls = []
    original = CrossAttention._folded
    monkeypatch.setattr(CrossAttention, "_folded", lambda self, *a: calls.append(1) or original(self, *a))
    attn(torch.randn(2, 5, 16), torch.randn(2, 6, 8))  # 6 + 1 null < 8
    assert calls == [1]
    attn(torch.randn(2, 5, 16), torch.randn(2, 7, 8))  # 7 + 1 null == dim_head: plain attention
    assert calls == [1]


def test_cosine_sim_cross_attention_is_not_folded_and_matches(monkeypatch):
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=8, cosine_sim=True)
    monkeypatch.setattr(CrossAttention, "_folded", lambda *a: pytest.fail("cosine-sim attention needs q itself"))
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    torch.testing.assert_close(attn(x, context), plain_cross_attention(attn, x, context), rtol=1e-5, atol=1e-5)
