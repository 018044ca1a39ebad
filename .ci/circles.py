#!/usr/bin/env python3
"""Import circles between the modules of a crate: `circles.py SRC_DIR...` prints each circle
and exits 1 if there is one.

A module is a file. A module depends on another when it names it: `use crate::a::B`,
`use super::B`, or an inline path such as `crate::a::f()`. Names re-exported with
`pub use` are followed to the module that defines them; a re-export or a `mod` line is
structure, not a dependency. Doc links and comments are not read. Method calls are not
paths, so a child module that adds `impl` blocks to its parent's type does not count."""
import os, re, sys
from collections import defaultdict

def modpath(src, f):
    rel = os.path.relpath(f, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)

def strip_comments(t):
    t = re.sub(r'//[^\n]*', '', t)
    t = re.sub(r'/\*.*?\*/', '', t, flags=re.S)
    t = re.sub(r'"(\\.|[^"\\])*"', '""', t)
    return t

def norm(b):
    b = re.sub(r'\s+', ' ', b)
    return re.sub(r'\s*(::|[{},])\s*', r'\1', b).strip()

def expand(prefix, body):
    body = norm(body)
    # body of use-tree after prefix, e.g. "{a::B, c::{D, E}}" -> list of paths
    out = []
    body = body.strip()
    if body.startswith('{'):
        depth = 0; cur = ''
        for ch in body[1:-1] + ',':
            if ch == '{': depth += 1
            if ch == '}': depth -= 1
            if ch == ',' and depth == 0:
                if cur.strip(): out += expand(prefix, cur)
                cur = ''
            else:
                cur += ch
        return out
    m = re.match(r'([\w]+)(::(.*))?$', body, re.S)
    if not m: return [prefix]
    head = m.group(1)
    if m.group(3) is not None:
        return expand(prefix + [head], m.group(3))
    return [prefix + [head.split(' as ')[0]]]

def main(src):
    files = []
    for d, _, fs in os.walk(src):
        files += [os.path.join(d, f) for f in fs if f.endswith('.rs')]
    mods = {modpath(src, f): f for f in files}
    reexp = {}
    for m, f in mods.items():
        t = strip_comments(open(f).read())
        for u in re.finditer(r'(?m)^\s*pub(\([^)]*\))?\s+use\s+([^;]+);', t):
            for p in expand([], u.group(2)):
                if not p: continue
                name = p[-1].split(' as ')[-1].strip()
                src = list(p)
                if src and src[0] == 'self': src = src[1:]
                if src and src[0] == 'crate': full = src[1:]
                elif src and src[0] == 'super': full = list(m[:-1]) + src[1:]
                else: full = list(m) + src
                reexp[m + (name,)] = full
    edges = defaultdict(set)
    for m, f in mods.items():
        t = strip_comments(open(f).read())
        paths = []
        for u in re.finditer(r'(?m)^\s*(pub(\([^)]*\))?\s+)?use\s+([^;]+);', t):
            if u.group(1): continue  # re-export
            paths += expand([], u.group(3))
        t2 = re.sub(r'(?m)^\s*(pub(\([^)]*\))?\s+)?use\s+[^;]+;', '', t)
        for p in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', t2):
            paths.append(p.group(1).split('::'))
        is_dir = os.path.basename(f) in ('mod.rs', 'lib.rs')
        for p in paths:
            if not p or p[0] not in ('crate', 'super', 'self'): continue
            base = list(m)
            i = 0
            if p[0] == 'crate': base = []; i = 1
            else:
                if not is_dir: base = base[:-1]  # self in foo.rs is foo; super is parent
                if p[0] == 'self': base = list(m); i = 1
                while i < len(p) and p[i] == 'super':
                    base = base[:-1]; i += 1
                if p[0] == 'super' and not is_dir:
                    pass
            full = base + p[i:]
            for _ in range(5):
                for k in range(len(full), 0, -1):
                    if tuple(full[:k]) in reexp:
                        full = reexp[tuple(full[:k])] + full[k:]; break
                else: break
            # longest module prefix
            best = ()
            for k in range(len(full), -1, -1):
                if tuple(full[:k]) in mods: best = tuple(full[:k]); break
            if best == m: continue
            # ancestors of m that are only re-export holders: skip edges to crate root / parents
            pass
            edges[m].add(best)
    # Tarjan SCC
    idx = {}; low = {}; st = []; on = set(); sccs = []; n = [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            sccs.append(c)
    for v in list(mods):
        if v not in idx: sc(v)
    bad = [c for c in sccs if len(c) > 1]
    for c in bad:
        names = sorted('::'.join(x) or 'crate' for x in c)
        print('circle:', ' <-> '.join(names))
        for a in c:
            for b in edges[a]:
                if b in c: print('   ', '::'.join(a) or 'crate', '->', '::'.join(b) or 'crate')
    if '-v' in sys.argv:
        for a in sorted(edges): print('::'.join(a) or 'crate', '->', sorted('::'.join(b) for b in edges[a]))
    return len(bad)

if __name__ == "__main__":
    found = 0
    for src in [a for a in sys.argv[1:] if a != "-v"]:
        print(f"== {src}")
        found += main(src)
    sys.exit(1 if found else 0)
