"Weight learning at hundreds of groups at a fixed starting SNR, and the warning when the base top-k is noise (pwattr.weights)"
import warnings
import pytest, torch
from pwattr.weights import planted_contributions, planted_noise, learn_weights, precision_at_k, topk_null_test

def planted(M, snr, seed=0, strength=3.):
    return planted_contributions(Q=32, N=2000, M=M, signal=range(8), n_true=20, strength=strength,
                                 noise=planted_noise(snr, M, strength=strength), seed=seed)

def test_planted_noise_gives_the_snr():
    S, true = planted(256, 1.0)
    s = S.sum(-1)
    mask = torch.zeros_like(s, dtype=torch.bool); mask[torch.arange(32)[:, None], true] = True
    # planted rows sit 8 x 3 = 24 above the rest; the sum's noise sd is 24 at SNR 1 (sampling error ~1% over 64k entries)
    assert abs(float(s[~mask].std()) / 24 - 1) < 0.03
    assert abs(float(s[mask].mean() - s[~mask].mean()) / 24 - 1) < 0.15

def test_learner_recovers_planted_groups_at_M256():
    S, true = planted(256, 1.0)
    gw = learn_weights(S, k=20)
    base, learned = precision_at_k(S.sum(-1), true, 20), precision_at_k(S @ gw.w, true, 20)
    assert base < 0.25, base                  # the base top-20 is mostly noise ...
    assert learned > 0.9, learned             # ... and the learner still finds the planted proponents
    assert float(gw.w[:8].mean() / gw.w[8:].mean()) > 5   # by up-weighting the 8 signal groups

def test_null_test_warns_on_noise_not_on_signal():
    S0, _ = planted_contributions(Q=32, N=2000, M=64, strength=0., noise=1., seed=3)
    with pytest.warns(UserWarning, match='indistinguishable'): r0 = topk_null_test(S0, k=20)
    assert r0['noise'] and r0['p'] > 0.05
    S1, _ = planted(64, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error'); r1 = topk_null_test(S1, k=20)
    assert not r1['noise'] and r1['p'] <= 0.05 and r1['share'] > r0['share']

def test_null_test_same_for_tensor_array_and_factory():
    S1, _ = planted(64, 2.0)
    a = topk_null_test(S1, k=20, warn=False)
    b = topk_null_test(S1.numpy(), k=20, warn=False)
    c = topk_null_test(lambda: ((slice(s, s + 500), S1[:, s:s + 500]) for s in range(0, 2000, 500)), k=20, warn=False)
    assert a == b == c
