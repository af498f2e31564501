"""The KD loss against independent dense computations (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from olmo_flex_ext.distill.loss import KDLossConfig, topk_kd_loss

N, V = 37, 50


def _case(k, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(N, V, generator=g, dtype=dtype) * 2
    teacher_logits = torch.randn(N, V, generator=g, dtype=dtype) * 3
    t_lp = F.log_softmax(teacher_logits, -1)
    lps, ids = t_lp.topk(k, -1)
    perm = torch.argsort(torch.rand(N, k, generator=g), -1)  # order within a row is irrelevant
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::5] = -100
    return student, teacher_logits, ids.gather(1, perm), lps.gather(1, perm), labels


def _dense_reference(student, ids, lps, labels, cfg):
    """Teacher distribution as a dense vector (zeros outside the top-k) and torch's kl_div."""
    valid = labels != -100
    s, ids, lps = student[valid], ids[valid], lps[valid]
    T = cfg.temperature
    log_q = F.log_softmax(s / T, -1)
    if cfg.rest_bucket:
        p_S = lps.exp()
        p_rest = (1 - p_S.sum(-1, keepdim=True)).clamp_min(0)
        in_S = torch.zeros_like(s, dtype=torch.bool).scatter(1, ids, True)
        q_S = log_q.exp().gather(1, ids)
        q_rest = (log_q.exp() * ~in_S).sum(-1, keepdim=True)
        target = torch.cat([p_S, p_rest], -1)
        kl = F.kl_div(torch.cat([q_S, q_rest], -1).log(), target, reduction="sum")
    else:
        p = torch.zeros_like(s).scatter(1, ids, torch.softmax(lps / T, -1))
        kl = F.kl_div(log_q, p, reduction="sum")
    ce = F.cross_entropy(student, labels, ignore_index=-100, reduction="sum")
    return cfg.kd_weight * T**2 * kl + cfg.ce_weight * ce, kl, ce


@pytest.mark.parametrize(
    "cfg",
    [
        KDLossConfig(),
        KDLossConfig(temperature=2.0),
        KDLossConfig(rest_bucket=True),
        KDLossConfig(kd_weight=0.5, ce_weight=0.5, temperature=0.7),
        KDLossConfig(kd_weight=1.0, ce_weight=0.3, rest_bucket=True, chunk_tokens=8),
    ],
    ids=["renorm", "temperature", "rest", "mix-ce", "rest-ce-chunked"],
)
def test_loss_and_grad_match_dense_reference(cfg):
    student, _, ids, lps, labels = _case(k=7)
    a = student.clone().requires_grad_()
    out = topk_kd_loss(a, ids, lps, labels, cfg)
    out.loss.backward()
    b = student.clone().requires_grad_()
    ref, kl, ce = _dense_reference(b, ids, lps, labels, cfg)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.kl, kl.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.ce, ce.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rest,temperature", [(False, 1.0), (False, 1.5), (True, 1.0)])
def test_k_equal_vocab_is_full_kl(rest, temperature):
    student, teacher_logits, ids, lps, labels = _case(k=V, seed=1)
    labels[:] = 3  # every position predicted
    cfg = KDLossConfig(rest_bucket=rest, temperature=temperature)
    out = topk_kd_loss(student, ids, lps, labels, cfg)
    full = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher_logits / temperature, -1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(out.kl / N, full, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss / N, temperature**2 * full, rtol=1e-9, atol=1e-12)


def test_float32_bf16_logits_and_agreement():
    student, _, ids, lps, labels = _case(k=5, seed=2, dtype=torch.float32)
    valid = labels != -100
    out32 = topk_kd_loss(student, ids, lps, labels)
    ref, _, _ = _dense_reference(student.double(), ids, lps.double(), labels, KDLossConfig())
    torch.testing.assert_close(out32.loss.double(), ref, rtol=1e-5, atol=1e-5)
    top_t = ids.gather(1, lps.argmax(-1, keepdim=True)).squeeze(1)
    assert out32.agree == ((student.argmax(-1) == top_t) & valid).sum()
    # bf16 logits: gradient comes back in bf16, loss computed in float32
    x = student.bfloat16().requires_grad_()
    topk_kd_loss(x, ids, lps, labels).loss.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_config_errors():
    with pytest.raises(Exception, match="rest_bucket needs temperature 1"):
        KDLossConfig(rest_bucket=True, temperature=2.0).validate()
    with pytest.raises(Exception, match="must be >= 0"):
        KDLossConfig(kd_weight=0.0, ce_weight=0.0).validate()


@pytest.mark.parametrize(
    "cfg",
    [
        KDLossConfig(),
        KDLossConfig(temperature=2.0, ce_weight=0.5),
        KDLossConfig(rest_bucket=True, ce_weight=1.0),
    ],
)
def test_loss_runs_on_fake_tensors(cfg):
    """No branch on tensor values: forward and backward trace on fake tensors (memory plans)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.randn(3, 40, 512, dtype=torch.bfloat16, requires_grad=True)
        ids = torch.randint(0, 512, (3, 40, 16))
        lps = torch.log_softmax(torch.randn(3, 40, 16), -1)
        labels = torch.randint(0, 512, (3, 40))
        out = topk_kd_loss(logits, ids, lps, labels, cfg)
        out.loss.backward()
        assert logits.grad.shape == logits.shape and logits.grad.dtype == torch.bfloat16
