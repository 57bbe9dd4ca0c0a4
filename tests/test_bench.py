"The benchmark helper's arithmetic: alternation order, medians, ratios (benchmarks/_bench.py), with fake clocks"
import json, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
import _bench

def test_order_alternates():
    assert _bench.order(['a', 'b'], 3) == ['a', 'b', 'b', 'a', 'a', 'b']
    assert _bench.order(['a', 'b', 'c'], 2) == ['a', 'b', 'c', 'c', 'b', 'a']

class FakeClock:
    "A clock each side advances by its own cost when it runs"
    def __init__(self): self.t = 0.0
    def __call__(self): return self.t

def test_alternate_medians_and_ratio(tmp_path):
    wall, cpu, calls = FakeClock(), FakeClock(), []
    costs = {'a': iter([1.0, 5.0, 2.0]), 'b': iter([10.0, 30.0, 20.0])}     # a's median 2, b's median 20
    def side(n):
        def f():
            calls.append(n); c = next(costs[n]); wall.t += c; cpu.t += c / 2; return n
        return f
    res = _bench.alternate({'a': side('a'), 'b': side('b')}, repeats=3, wall=wall, cpu=cpu)
    assert calls == ['a', 'b', 'b', 'a', 'a', 'b']
    assert res['a']['wall'] == [1.0, 5.0, 2.0] and res['b']['cpu'] == [5.0, 15.0, 10.0]
    assert res['a']['out'] == 'a'
    b = _bench.Bench('t', measure=False, out=lambda s: None)
    assert b.ratio('b / a', res, 'b', 'a', differs='nothing', same_work=True) == pytest.approx(10.0)   # 10 / 5 (cpu medians)
    assert b.ratio('a / b', res, 'a', 'b', differs='nothing', same_work=True, clock='wall') == pytest.approx(0.1)
    p = b.save(tmp_path / 't.json'); rec = json.loads(p.read_text())
    assert rec['ratios'][0]['ratio_wall'] == pytest.approx(10.0) and rec['ratios'][0]['same_work']
    assert 'load_after' in rec

def test_median_and_bad_repeats():
    assert _bench.median([3, 1, 2]) == 2 and _bench.median([4, 1, 2, 3]) == 2.5
    with pytest.raises(ValueError, match='repeats'): _bench.alternate({'a': lambda: 0}, repeats=0)
    with pytest.raises(ValueError, match='no values'): _bench.median([])

def test_limits_are_positive():
    assert _bench.matmul_gflops(1, n=128, repeats=2) > 0 and _bench.memory_gbps(mib=8, repeats=2) > 0
