"""Core results on tiny seeded inputs, saved to compare two checkouts bit for bit (a refactor must not move a number).

    cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python /path/to/tools/same_numbers.py /tmp/a.npz   # before
    cd BRANCH    && OMP_NUM_THREADS=1 .venv/bin/python tools/same_numbers.py /tmp/b.npz              # after
    python tools/same_numbers.py --compare /tmp/a.npz /tmp/b.npz
Covers features (in memory and stored), TRAK / Grad-Dot / EK-FAC (fitted and streamed) / LoGRA contributions,
weights given as lists, dicts and GroupWeights, learned weights, LDS and per-group LDS, the LM losses, KernelRefit
and the block x function table. Runs on either argument order of `kron_features`.
"""
import sys, inspect, tempfile, numpy as np, torch
if sys.argv[1] == '--compare':
    a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
    bad = sorted(set(a) ^ set(b)) + [k for k in a if k in b and not (a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
                                                                      and np.array_equal(a[k], b[k], equal_nan=True))]
    print(f"bit-identical: {len(a) - len(bad)} of {len(a)}" + (f"; differ: {bad}" if bad else ''))
    sys.exit(1 if bad else 0)
torch.set_num_threads(1)
from torch import nn
from pwattr.grouping import GroupSpec
from pwattr.features import featurize, Projector, LMLoss, CrossEntropy
from pwattr.methods import TRAK, GradDot, TracInCP
from pwattr.kronecker import kron_features, fit_kron_factors, EKFAC, LoGRA, fisher_output_for, SampledLMLoss
from pwattr.weights import learn_weights, apply_weights, GroupWeights, subset_preds, lds_from_preds, oracle_weights
from pwattr.evaluate import lds, per_group_lds
from pwattr.groundtruth import GroundTruth
from pwattr.plots import topk_under, block_function_table
from pwattr.models import lm_loss, gpt2_lm
out = {}
torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
data = {'x': torch.randn(80, 10), 'y': torch.randint(0, 4, (80,))}
qd = {'x': torch.randn(12, 10), 'y': torch.randint(0, 4, (12,))}
gs = GroupSpec.by_tensor(mlp)
pr = Projector(32, 'rademacher', seed=1)
tr = featurize(mlp, 'margin', data, gs, projector=pr, batch_size=16, progress=False)
q = featurize(mlp, 'margin', qd, gs, projector=pr, batch_size=16, progress=False)
out['x'] = tr.x
with tempfile.TemporaryDirectory() as d:
    st = featurize(mlp, 'margin', data, gs, projector=pr, batch_size=16, store=f'{d}/s', progress=False)
    out['store_x'] = st.x.clone()
c = TRAK().fit(tr).contributions(q); out['S_trak'] = c.S
out['scores_list'] = c.scores([1., 2., 0.5, 3.])
out['scores_dict'] = c.scores({gs.names[0]: 0.25})
gw = learn_weights(c, k=5, steps=50); out['w'] = gw.w
out['scores_gw'] = c.scores(gw)
out['apply'] = apply_weights(c.S, gw.w)
out['si'] = GradDot().fit(tr).self_influence()
out['topk'] = torch.tensor(topk_under(c.S, 0, [1., 2., 0.5, 3.], 5, groups=gs.names)[0])
masks = torch.rand(20, 80, generator=torch.Generator().manual_seed(3)) < 0.5
outs = (torch.randn(20, 1, 12, generator=torch.Generator().manual_seed(4))).numpy()
gt = GroundTruth(masks.numpy(), np.zeros((20, 1)), outs, list(q.ids), 'margin')
out['lds'] = torch.tensor(lds(c, gt).per_query)
pg = per_group_lds(c, gt, views={'block': {g: g.split('.')[0] for g in gs.names}})
out['pg'] = torch.tensor(pg.table['lds'].to_numpy() if hasattr(pg, 'table') else np.asarray(pg.df['lds']))
P = subset_preds(c.S, masks); out['P'] = P
out['ldsp'] = lds_from_preds(P, torch.as_tensor(outs[:, 0].T), [1., 2., 0.5, 3.])
ce = CrossEntropy()
kf = lambda m, f, dd, **kw: kron_features(m, f, dd, **kw) if list(inspect.signature(kron_features).parameters)[1] == 'out_fn' else kron_features(m, dd, f, **kw)
fac = fit_kron_factors(mlp, data, fisher_output_for(ce), batch_size=16, seed=0)
kq = kf(mlp, ce, qd)
ek = EKFAC(fac)
out['ek_S'] = ek.fit(kf(mlp, ce, data)).contributions(kq).S
out['ek_stream'] = EKFAC(fac).contributions_streamed(mlp, data, ce, kq, batch_size=16).S
out['ek_si'] = EKFAC(fac).self_influence_streamed(mlp, data, ce, batch_size=16)
lg = LoGRA().fit(kf(mlp, ce, data, rank=2, seed=3)); out['lg_S'] = lg.contributions(kf(mlp, ce, qd, rank=2, seed=3)).S
torch.manual_seed(1)
gpt = gpt2_lm(n_layer=1, n_embd=16, n_head=2, n_ctx=16).eval()
ids = torch.randint(0, 256, (4, 12)); mask = torch.ones_like(ids); mask[1, 8:] = 0; mask[2, :3] = 0
b = {'input_ids': ids, 'attention_mask': mask}
out['lm_loss'] = lm_loss(gpt, b).detach(); out['lm_sum'] = lm_loss(gpt, b, 'sum').detach()
out['LMLoss'] = LMLoss()(gpt, b).detach(); out['LMLoss_sum'] = LMLoss('sum')(gpt, b).detach()
out['sampled'] = SampledLMLoss(reduction='mean')(gpt, b, torch.Generator().manual_seed(0)).detach()
out['sampled3'] = SampledLMLoss(n_samples=3)(gpt, b, torch.Generator().manual_seed(0)).detach()
from pwattr.safe import KernelRefit
try:
    kr = KernelRefit(tr.x.double(), tr.dims, tr.groups, lam=1.0)
    out['refit'] = kr.scores(q.x.double(), torch.tensor([1., 2., 0.5, 3.], dtype=torch.float64))
except Exception as e: print('refit skipped', repr(e)[:200])
tab = block_function_table({g: float(i) for i, g in enumerate(gs.names)}, gs.names)
out['bft'] = torch.tensor(tab.to_numpy(dtype=float))
np.savez(sys.argv[1], **{k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in out.items() if v is not None})
print(len(out), 'saved')
