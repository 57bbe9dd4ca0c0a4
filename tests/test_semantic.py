"Tests of pwattr.semantic: recall against brute force, planted style signal, seeded determinism, errors, a tiny end-to-end study"
import os
import numpy as np, pandas as pd, pytest, torch
from pwattr.semantic import (semantic_group_of, semantic_groups, group_kind, query_plan, plan_prompts, topk_positions,
                             attribute_recall, chance_recall, learn_weight_sets, semantic_table, semantic_study,
                             _planted_semantic, gate_weight_sets, gate_table)
from pwattr.weights import GroupWeights

torch.set_num_threads(1)


def brute_recall(scores, qv, tv, k):
    out = []
    for q in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda n: (-float(scores[q, n]), n))[:k]
        out.append(sum(int(tv[n]) == int(qv[q]) for n in order) / k)
    return np.array(out)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_recall_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    sc = torch.randn(7, 50, generator=g).round(decimals=1)          # many ties
    qv, tv = torch.randint(0, 4, (7,), generator=g), torch.randint(0, 4, (50,), generator=g)
    for k in (1, 5, 10):
        np.testing.assert_allclose(attribute_recall(sc, qv, tv, k), brute_recall(sc, qv, tv, k))
    np.testing.assert_allclose(chance_recall(qv, tv), [(tv == v).float().mean().item() for v in qv])


def test_topk_is_stable_on_ties():
    sc = torch.zeros(1, 6); sc[0, 4] = 1
    assert topk_positions(sc, 3).tolist() == [[4, 0, 1]]


def test_style_weights_raise_style_recall_on_planted_contributions():
    S, plan, lab = _planted_semantic(seed=3)
    ws = learn_weight_sets(S, plan, k=5)
    _, det = semantic_table(S, plan, ws, lab, 'planted', k=5)
    d = det.set_index(['weights', 'attribute']).recall
    assert d['style', 'style'] > d['unweighted', 'style'] + 0.2
    assert d['style', 'style'] > d['background', 'style']            # the other attribute's weights do not help style
    assert d['background', 'background'] > d['unweighted', 'background'] + 0.2
    assert int(torch.argmax(ws['style'].w)) == 0 and int(torch.argmax(ws['background'].w)) == 1


def test_uniform_weights_give_the_unweighted_row():
    S, plan, lab = _planted_semantic(seed=1)
    M = S.shape[2]
    ones = {'flat': GroupWeights(torch.ones(M), [f'g{j}' for j in range(M)], settings={'query_ids': ['nope']})}
    res, det = semantic_table(S, plan, ones, lab, 'planted', k=5)
    d = det.set_index(['weights', 'attribute']).recall
    for a in ('style', 'background'): assert d['flat', a] == d['unweighted', a]


def test_learning_queries_are_refused_at_evaluation():
    S, plan, lab = _planted_semantic(seed=0)
    ws = learn_weight_sets(S, plan, k=5)
    bad = plan.copy(); bad['split'] = np.where(bad.split == 'learn', 'eval', 'learn')   # evaluate on the learning queries
    with pytest.raises(ValueError, match='used to learn'):
        semantic_table(S, bad, ws, lab, 'planted', k=5)


def test_plan_is_seeded_balanced_and_disjoint():
    lab = {'subject': torch.arange(12) % 6, 'style': torch.arange(12) % 2, 'background': torch.arange(12) % 4}
    a, b, c = query_plan(lab, 6, 6, seed=0), query_plan(lab, 6, 6, seed=0), query_plan(lab, 6, 6, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c) and not set(a.seed) & set(c.seed)
    assert a.seed.is_unique
    for attr, n in (('subject', 6), ('style', 2), ('background', 4)):
        for split in ('learn', 'eval'):
            v = a[(a.attribute == attr) & (a.split == split)].value
            assert sorted(v.unique()) == list(range(n))              # every value prompted
            assert v.value_counts().max() - v.value_counts().min() <= 1
    assert all(len(p) == 1 for p in plan_prompts(a))                  # one attribute per prompt


def test_learn_weight_sets_is_deterministic():
    S, plan, _ = _planted_semantic(seed=2)
    a, b = learn_weight_sets(S, plan, k=5), learn_weight_sets(S, plan, k=5)
    for n in a: assert torch.equal(a[n].w, b[n].w)


def _planted_refs(S, seed, noise=1.5, n=2):
    "Reference methods that see the planted style / background proponents (groups 0 and 1) through their own noise"
    sig = S[..., :2].sum(-1)
    return {f'ref{i}': (sig + noise * torch.randn(sig.shape, generator=torch.Generator().manual_seed(seed * 10 + i)))[..., None]
            for i in range(n)}


def _gain_by_hand(S, refs, idx, w):
    "min over references of the mean (over queries) gain in Pearson correlation, with numpy"
    base, tau = S[idx].double().sum(-1).numpy(), (S[idx].double() @ w.double()).numpy()
    return min(np.mean([np.corrcoef(tau[q], r[idx][q, :, 0].numpy())[0, 1] - np.corrcoef(base[q], r[idx][q, :, 0].numpy())[0, 1]
                        for q in range(len(idx))]) for r in refs.values())


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gate_keeps_weights_that_raise_agreement_and_refuses_those_that_lower_it(seed):
    S, plan, lab = _planted_semantic(seed=seed)
    refs = _planted_refs(S, seed)
    groups = ['g0 style', 'g1 background', 'g2 noise']
    ids = [f'seed{s}' for s in plan.seed]
    learn = (plan.split == 'learn').to_numpy()
    idx = {a: np.flatnonzero(learn & (plan.attribute == a).to_numpy()) for a in ('style', 'background')}
    ws = {'general': GroupWeights(torch.tensor([1., 1., .5]), groups, settings={'query_ids': [ids[i] for i in np.flatnonzero(learn)]}),
          'style': GroupWeights(torch.tensor([2.5, .25, .25]), groups, settings={'query_ids': [ids[i] for i in idx['style']]}),
          'background': GroupWeights(torch.tensor([.25, .25, 2.5]), groups, settings={'query_ids': [ids[i] for i in idx['background']]})}
    # planted so the answer is known: style weights raise the style group, background weights raise the noise group
    assert _gain_by_hand(S, refs, idx['style'], ws['style'].w) > 0.1
    assert _gain_by_hand(S, refs, idx['background'], ws['background'].w) < -0.1
    safe = gate_weight_sets({'m': S, **refs}, plan, {'m': ws}, candidates=('own',))
    st, bg = safe['m']['style'], safe['m']['background']
    assert st.info['gate']['use'] and st.info['gate']['chosen'] == 'style'
    a = st.info['gate']['shrink']
    torch.testing.assert_close(st.w, 1 + a * (ws['style'].w - 1))
    ver = idx['style'][np.random.default_rng(0).permutation(len(idx['style']))[len(idx['style']) // 2:]]   # the gate's verification half (seed 0)
    g_hand = _gain_by_hand(S, refs, ver, 1 + a * (ws['style'].w.double() - 1))   # the gate's float64 weights
    assert abs(st.info['gate']['gain'] - g_hand) <= 1e-9 * max(1., abs(g_hand))      # float64 correlations of O(1)
    assert not bg.info['gate']['use'] and torch.equal(bg.w, torch.ones(3))
    assert bg.verdict.startswith('keep uniform weights')
    # the recall table: refused -> the unweighted ranking on background queries; kept -> the (shrunk) style weights
    _, det = semantic_table(S, plan, {**ws, 'safe': safe['m']}, lab, 'm', k=5)
    d = det.set_index(['weights', 'attribute']).recall
    assert d['safe', 'background'] == d['unweighted', 'background']
    assert d['safe', 'style'] >= d['unweighted', 'style']
    # with learned weights (they find the planted groups) the gate keeps both attributes' weights
    learned = gate_weight_sets({'m': S, **refs}, plan, {'m': learn_weight_sets(S, plan, k=5)})
    assert all(w.info['gate']['use'] for w in learned['m'].values()), gate_table(learned)


def test_gate_is_seeded_and_needs_references():
    S, plan, _ = _planted_semantic(seed=4)
    refs = _planted_refs(S, 4)
    ws = learn_weight_sets(S, plan, k=5)
    a, b = (gate_weight_sets({'m': S, **refs}, plan, {'m': ws}, seed=3) for _ in range(2))
    c = gate_weight_sets({'m': S, **refs}, plan, {'m': ws}, seed=4)
    pd.testing.assert_frame_equal(gate_table(a), gate_table(b))
    assert gate_table(a).lower.tolist() != gate_table(c).lower.tolist()       # the bootstrap is what the seed draws
    alone = gate_weight_sets({'m': S}, plan, {'m': ws})
    assert all(torch.equal(w.w, torch.ones(3)) and 'no reference method' in w.verdict for w in alone['m'].values())
    # a candidate that lowers the agreement with one reference is refused even if it raises it with the other
    bad_ref = {'ref0': refs['ref0'], 'anti': -refs['ref1']}
    mixed = gate_weight_sets({'m': S, **bad_ref}, plan, {'m': ws})
    assert not any(w.info['gate']['use'] for w in mixed['m'].values())


def test_bad_input_errors():
    lab = {'style': torch.tensor([0, 1])}
    with pytest.raises(KeyError, match="did you mean 'style'"): query_plan(lab, attributes=['stile'])
    with pytest.raises(KeyError, match='lacks'): query_plan(lab, attributes=['subject'])
    with pytest.raises(ValueError, match='n_learn'): query_plan(lab, n_learn=0, attributes=['style'])
    with pytest.raises(ValueError, match="did you mean 'das'"): semantic_study(methods='dass')
    with pytest.raises(ValueError, match='not a conditional'): semantic_study('fmnist-mlp')
    S, plan, lab = _planted_semantic()
    with pytest.raises(ValueError, match='one row per plan row'): learn_weight_sets(S[:3], plan)
    ws = learn_weight_sets(S, plan, k=5)
    with pytest.raises(ValueError, match='one row per plan row'): gate_weight_sets({'m': S, 'r': S[:3]}, plan, {'m': ws})
    with pytest.raises(ValueError, match='different training sets'): gate_weight_sets({'m': S, 'r': S[:, :10]}, plan, {'m': ws})
    with pytest.raises(KeyError, match='no contributions'): gate_weight_sets({'m': S}, plan, {'x': ws})
    with pytest.raises(KeyError, match='has no weights for attribute'): semantic_table(S, plan, {'safe': {'style': ws['style']}}, lab)


def test_groups_cover_the_model_and_name_the_kinds():
    from pwattr.presets import get_preset
    m = get_preset('sbemoji-cond').make_model(0)
    G = semantic_groups(m)
    assert sum(G.sizes) == sum(p.numel() for p in m.parameters())
    assert {'embed.subject', 'embed.style', 'embed.background', 'down1.cross_attn', 'mid.cross_attn', 'up0.cross_attn'} <= set(G.names)
    kinds = {group_kind(g) for g in G.names}
    assert {'embedding', 'cross-attention', 'self-attention', 'shallow conv', 'deep conv'} <= kinds


@pytest.mark.skipif(os.environ.get('PWATTR_FAST') == '1', reason='tiny end-to-end study (~1 min on 2 cores)')
def test_tiny_study_end_to_end_and_cached(tmp_path):
    from pwattr.presets import get_preset
    p = get_preset('sbemoji-cond').with_config(recipe={'steps': 4})
    kw = dict(methods='dtrak', out=tmp_path, n_learn=2, n_eval=2, k=3, K=1, proj_dim=8, gen_steps=2, progress=False, log=None,
              attributes=('style', 'background'))
    s1 = semantic_study(p, **kw)
    df = s1.results.df
    assert set(df.weights) == {'unweighted', 'general', 'style', 'background', 'safe'}
    safe_rows = df[df.weights == 'safe'].set_index('metric').value          # one method: no reference, so uniform
    pd.testing.assert_series_equal(safe_rows, df[df.weights == 'unweighted'].set_index('metric').value)
    st = s1.safe_table()
    assert list(st.index) == [('D-TRAK', 'style'), ('D-TRAK', 'background')] and (st.applied == 'uniform').all()
    assert st.verdict.str.contains('no reference method').all()
    assert set(df.metric) == {'recall@3 style', 'recall@3 background'}
    assert ((df.value >= 0) & (df.value <= 1)).all()
    assert set(s1.weights) == {'general', 'style', 'background'}
    assert len(list((tmp_path / 'cache' / p.config_hash / 'semantic').glob('*.pt'))) == 3   # queries, contributions, weights
    ev = s1.plan.split == 'eval'
    assert not set(np.array(s1.queries.ids)[ev]) & set(np.array(s1.queries.ids)[~ev])
    fig = s1.gallery('style', q=1, k=2)                              # unweighted / style / general rows
    assert len(fig.axes) == 3 * 3
    from pwattr.plots import overlapping_text
    assert overlapping_text(fig) == []
    # the unweighted row, recomputed: top-2 of the summed scores of the second style evaluation query, captioned with its labels
    evs = np.flatnonzero(((s1.plan.split == 'eval') & (s1.plan.attribute == 'style')).to_numpy())
    top = s1.contributions['dtrak'].S[evs[1]].double().sum(-1).argsort(descending=True)[:2].tolist()
    for n, ax in zip(top, fig.axes[1:3]):
        m = s1.train.meta.iloc[n]
        assert ax.get_xlabel().split('\n')[1:] == [m.subject, f"{m['style']}, {m.background}"], (ax.get_xlabel(), m.id)
    want = s1.train.info['styles'][int(s1.plan.value.iloc[evs[1]])]
    assert fig.axes[0].get_xlabel().split('\n')[1:] == [f'prompt: {want}', '(style only)']
    hits = sum(s1.train.meta['style'].iloc[n] == want for n in top)
    assert fig.axes[1].get_title(loc='left') == f'unweighted ({hits} of 2 {want})'
    axs = s1.plot()                                                  # one panel per attribute, the legend beside them
    assert overlapping_text(axs[0].figure) == [] and axs[0].get_legend() is None
    assert 'chance (random ranking)' in [t.get_text() for t in axs[-1].get_legend().get_texts()]
    with pytest.raises(IndexError, match='2 evaluation queries'): s1.gallery('style', q=2)
    kinds = s1.weight_kinds()
    assert list(kinds.index) == ['general', 'style', 'background'] and 'embedding' in kinds.columns
    s2 = semantic_study(p, **kw)                                     # from the cache: identical
    pd.testing.assert_frame_equal(s1.results.df, s2.results.df)
    assert torch.equal(s1.contributions['dtrak'].S, s2.contributions['dtrak'].S)
