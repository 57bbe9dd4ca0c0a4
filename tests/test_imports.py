"""The import graph of `pwattr/*.py` has no cycle.

Every import counts, wherever it sits: module level, inside functions and methods, under `if`/`try`
(a lazy import that only hides a cycle is still a cycle). Counted forms:
`from .x import ...`, `from . import x`, `from pwattr.x import ...`, `from pwattr import x`, `import pwattr.x`.
`_modidx.py` (nbdev's index, no imports) and `__init__.py` are left out; `from __future__` is not a module.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'pwattr'

def module_imports(path:Path, # a module file in `pwattr/`
                   names:set, # the package's module names
                  )->set: # the package modules `path` imports, anywhere in the file
    "Names of `pwattr` modules imported by `path`, at any depth"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 or mod == 'pwattr' or mod.startswith('pwattr.'):
                base = mod[len('pwattr'):].lstrip('.') if node.level == 0 else mod
                if base: found.add(base.split('.')[0])
                else: found |= {a.name for a in node.names if a.name in names}  # from . import x / from pwattr import x
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('pwattr.')}
    return {m for m in found if m in names and m != path.stem}

def import_graph(pkg:Path=PKG)->dict:
    "Module name -> set of package modules it imports"
    files = {p.stem: p for p in sorted(pkg.glob('*.py')) if p.stem not in ('__init__', '_modidx')}
    return {name: module_imports(p, set(files)) for name, p in files.items()}

def find_cycle(graph:dict)->list|None:
    "One cycle as a list of modules (first == last), or None"
    state, stack = {}, []
    def visit(u):
        state[u] = 1; stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1: return stack[stack.index(v):] + [v]
            if v not in state and (c := visit(v)): return c
        state[u] = 2; stack.pop()
    for u in sorted(graph):
        if u not in state and (c := visit(u)): return c

def all_cycles(graph:dict)->list:
    "Every strongly connected group of more than one module (each is at least one cycle)"
    index, low, on, stack, out, i = {}, {}, set(), [], [], [0]
    def strong(u):
        index[u] = low[u] = i[0]; i[0] += 1; stack.append(u); on.add(u)
        for v in graph.get(u, ()):
            if v not in index: strong(v); low[u] = min(low[u], low[v])
            elif v in on: low[u] = min(low[u], index[v])
        if low[u] == index[u]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == u: break
            if len(comp) > 1: out.append(sorted(comp))
    for u in sorted(graph):
        if u not in index: strong(u)
    return out

def test_finder_finds_a_cycle():
    "The checker can fail: a made-up graph with a -> b -> c -> a"
    g = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycle(g) == ['a', 'b', 'c', 'a']
    assert all_cycles(g) == [['a', 'b', 'c']]
    assert find_cycle({'a': {'b'}, 'b': set()}) is None

def test_parser_counts_lazy_and_absolute_imports(tmp_path):
    "Imports inside functions, absolute `pwattr.` and `from . import x` all count"
    (tmp_path/'a.py').write_text('from .b import x\ndef f():\n    from pwattr.c import y\n    import pwattr.d\n')
    (tmp_path/'b.py').write_text('from . import c\nfrom __future__ import annotations\n')
    (tmp_path/'c.py').write_text('from pwattr import d, nope\n')
    (tmp_path/'d.py').write_text('import numpy\n')
    g = import_graph(tmp_path)
    assert g == {'a': {'b', 'c', 'd'}, 'b': {'c'}, 'c': {'d'}, 'd': set()}, g

def test_no_import_cycle():
    g = import_graph()
    assert len(g) > 10 and any(g.values()), 'found no modules or no imports: is PKG right?'
    cyc = all_cycles(g)
    assert not cyc, 'import cycles in pwattr (break each; a lazy import inside a function counts too):\n' + '\n'.join(
        ' -> '.join(find_cycle({k: g[k] & set(c) for k in c})) for c in cyc)
