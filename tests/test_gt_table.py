"benchmarks/gt_table.py reads only the contributions an audit caches by default, EK-FAC's joint cache included"
import sys
from pathlib import Path
import numpy as np, pytest, torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
from pwattr.audit import _save_cache, save_settings
from pwattr.evaluate import lds
from pwattr.groundtruth import GroundTruth
from pwattr.methods import Contributions

def test_widths_take_the_audit_defaults_only(tmp_path):
    import gt_table
    g = torch.Generator().manual_seed(0)
    Q, L, N, S = 6, 4, 30, 12                                    # evaluation queries, learning queries, train, subsets
    qe, ql = [f'e{i}' for i in range(Q)], [f'l{i}' for i in range(L)]
    masks = np.random.default_rng(0).random((S, N)) < 0.5
    gt = GroundTruth(masks, np.zeros((S, 1)), np.random.default_rng(1).normal(size=(S, 1, Q)), qe, config_hash='h0')
    cache = tmp_path / 'runs' / 'demo' / 'cache' / 'h0'; cache.mkdir(parents=True)
    base = dict(stage='contributions', seed=0, grouping='preset', reg=None)
    def put(name, settings, ids, joint=False):   # an audit's (eval, learn) pair, or EK-FAC's one joint cache
        c = Contributions(torch.randn(len(ids), N, 2, generator=g), ['a', 'b'], query_ids=ids)
        _save_cache(c if joint else (c[:Q], c[Q:]), cache / f'contrib-{name}.pt')
        save_settings(settings, cache / f'contrib-{name}.pt')
        return c
    trak = put('trak-x', base, qe + ql)                                     # the audit's default
    ekfac = put('ekfac-preset', base, qe + ql, joint=True)                 # evaluation queries first
    put('trak-y', {**base, 'reg': 0.3}, qe + ql)                           # a regulariser grid value
    put('trak-z', {**base, 'seed': 1}, qe + ql)                            # a second seed's model (cross_seed.py)
    put('trak-w', {**base, 'grouping': 'tensor'}, qe + ql)                 # another grouping
    put('other', base, ql + qe)                                            # another query order: not this ground truth's
    w = gt_table.widths(gt, tmp_path / 'runs')
    assert set(w) == {'trak-x', 'ekfac-preset'}
    for name, c in (('trak-x', trak), ('ekfac-preset', ekfac)):           # LDS of the evaluation rows, computed directly
        r = lds(c.S[:Q].sum(-1), gt)
        assert w[name] == (round(r.mean, 4), round(r.ci[1] - r.ci[0], 4))
