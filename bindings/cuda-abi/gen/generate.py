#!/usr/bin/env python3
"""Generate the raw ABI of the CUDA driver API and NVML from NVIDIA's own headers.

Output (committed, like bindgen output): src/driver.rs and src/nvml.rs. Each holds
- one macro listing every function the real library exports, with its exact C signature mapped
  to raw Rust types (scalars by width, enums as u32, every pointer as a raw pointer);
- the constants of every enum (error codes, attributes, ...);
- (driver only) the cuGetProcAddress table: for each API name, CUDA version and stream flavour,
  the symbol the real driver hands out.

The headers are not committed. Get them from PyPI and run:

    pip download --no-deps nvidia-cuda-runtime-cu12 nvidia-nvml-dev-cu12 -d /tmp/w
    (cd /tmp/w && for f in *.whl; do unzip -qo $f -d x; done)
    python3 bindings/cuda-abi/gen/generate.py /tmp/w/x/nvidia/cuda_runtime/include /tmp/w/x/nvidia/nvml_dev/include

Needs gcc (preprocessor) and pycparser (pip install pycparser).
"""
import os
import re
import subprocess
import sys

from pycparser import c_ast, c_parser

# Structs the headers pass by value, and their hand-written #[repr(C)] twins in src/lib.rs.
BYVAL = {
    "struct:CUipcEventHandle_st": "$crate::CUipcEventHandle",
    "struct:CUipcMemHandle_st": "$crate::CUipcMemHandle",
    "struct:CUmemLocation_st": "$crate::CUmemLocation",
}
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "src")

SCALARS = {
    ("int",): "i32", ("signed", "int"): "i32", ("unsigned", "int"): "u32", ("unsigned",): "u32",
    ("long",): "i64", ("long", "int"): "i64", ("unsigned", "long"): "u64",
    ("unsigned", "long", "int"): "u64", ("long", "long"): "i64", ("long", "long", "int"): "i64",
    ("unsigned", "long", "long"): "u64", ("unsigned", "long", "long", "int"): "u64",
    ("short",): "i16", ("unsigned", "short"): "u16", ("char",): "core::ffi::c_char",
    ("signed", "char"): "i8", ("unsigned", "char"): "u8", ("float",): "f32", ("double",): "f64",
    ("void",): "core::ffi::c_void", ("size_t",): "usize",
}


def preprocess(header, include_dirs, defines):
    cmd = ["gcc", "-E", "-P", "-nostdinc", "-I", os.path.join(HERE, "stub_include")]
    for d in include_dirs:
        cmd += ["-I", d]
    for d in defines:
        cmd += ["-D" + d]
    cmd += ["-D__attribute__(x)=", "-D__declspec(x)=", "-D__inline=inline", header]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class Types:
    def __init__(self):
        self.typedefs = {}
        self.enums = {}  # enum name -> [(name, value)]
        self.enum_typedefs = set()
        self.structs = set()

    def collect(self, ast):
        for ext in ast.ext:
            if isinstance(ext, c_ast.Typedef):
                self.typedefs[ext.name] = ext.type
            self._enums(ext)

    def _enums(self, node):
        for _, child in node.children():
            self._enums(child)
        if isinstance(node, c_ast.Enum) and node.values is not None:
            vals, nxt = [], 0
            for e in node.values.enumerators:
                if e.value is not None:
                    nxt = self._const(e.value, dict(vals))
                vals.append((e.name, nxt))
                nxt += 1
            self.enums[node.name or f"anon{len(self.enums)}"] = vals

    def _const(self, expr, known):
        if isinstance(expr, c_ast.Constant):
            v = expr.value.rstrip("uUlL")
            return int(v, 0)
        if isinstance(expr, c_ast.UnaryOp) and expr.op == "-":
            return -self._const(expr.expr, known)
        if isinstance(expr, c_ast.ID):
            if expr.name in known:
                return known[expr.name]
            for vals in self.enums.values():
                for n, v in vals:
                    if n == expr.name:
                        return v
        if isinstance(expr, c_ast.BinaryOp):
            a, b = self._const(expr.left, known), self._const(expr.right, known)
            return {"<<": a << b, "|": a | b, "+": a + b, "-": a - b, ">>": a >> b, "&": a & b, "*": a * b}[expr.op]
        if isinstance(expr, c_ast.Cast):
            return self._const(expr.expr, known)
        raise ValueError(f"cannot evaluate enum value {expr}")

    def rust(self, t, where):
        """Map a parameter or return type to a raw Rust type."""
        if isinstance(t, c_ast.TypeDecl):
            return self._base(t.type, where)
        if isinstance(t, (c_ast.PtrDecl, c_ast.ArrayDecl)):
            inner = t.type
            const = isinstance(inner, c_ast.TypeDecl) and "const" in (inner.quals or [])
            if isinstance(inner, c_ast.FuncDecl):
                return "*mut core::ffi::c_void"
            pointee = self.rust(inner, where)
            if pointee.startswith("struct:"):
                pointee = "core::ffi::c_void"
            return ("*const " if const else "*mut ") + pointee
        if isinstance(t, c_ast.FuncDecl):
            return "*mut core::ffi::c_void"
        raise ValueError(f"{where}: unsupported type {t}")

    def _base(self, t, where):
        if isinstance(t, c_ast.IdentifierType):
            names = tuple(t.names)
            if names in SCALARS:
                return SCALARS[names]
            if len(names) == 1 and names[0] in self.typedefs:
                return self.rust(self.typedefs[names[0]], where)
            raise ValueError(f"{where}: unknown type {names}")
        if isinstance(t, c_ast.Enum):
            return "u32"
        if isinstance(t, (c_ast.Struct, c_ast.Union)):
            return "struct:" + (t.name or "anon")
        raise ValueError(f"{where}: unsupported base type {t}")


def functions(ast, types, prefix):
    out = {}
    for ext in ast.ext:
        if isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.FuncDecl) and ext.name.startswith(prefix):
            fd = ext.type
            ret = types.rust(fd.type, ext.name)
            params = []
            for i, p in enumerate(fd.args.params if fd.args else []):
                if isinstance(p, c_ast.EllipsisParam):
                    raise ValueError(f"{ext.name}: variadic")
                ty = types.rust(p.type, ext.name)
                if ty == "core::ffi::c_void":
                    continue  # f(void)
                if ty.startswith("struct:"):
                    if ty not in BYVAL:
                        raise ValueError(f"{ext.name}: struct {ty} passed by value (add it to BYVAL)")
                    ty = BYVAL[ty]
                name = p.name or f"arg{i}"
                if name in ("type", "fn", "ref", "match", "mod", "impl", "loop", "move", "self", "use", "where", "in", "priv"):
                    name += "_"
                params.append((name, ty))
            out[ext.name] = (ret, params)
    return out


def parse(text):
    return c_parser.CParser().parse(text, "header")


def emit_functions(macro, funcs, doc):
    lines = [f"/// {doc}", "///",
             "/// Invoke with the name (or path) of a macro that takes `$(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*`;",
             "/// tokens after a comma are passed to it first, before the list.",
             "#[macro_export]", f"macro_rules! {macro} {{", "    ($($m:ident)::+ $(, $($extra:tt)*)?) => {", "        $($m)::+! {",
             "            $($($extra)*)?"]
    for name in sorted(funcs):
        ret, params = funcs[name]
        args = ", ".join(f"{n}: {t}" for n, t in params)
        lines.append(f"            fn {name}({args}) -> {ret};")
    lines += ["        }", "    };", "}"]
    return "\n".join(lines) + "\n"


def emit_enums(types, keep):
    lines, seen = [], set()
    for ename, vals in types.enums.items():
        if not keep(ename, vals):
            continue
        for n, v in vals:
            if n in seen:
                continue
            seen.add(n)
            lines.append(f"pub const {n}: u32 = {v & 0xffffffff:#x};")
    return "\n".join(lines) + "\n"


def emit_names(fn_name, types, enum_name):
    vals = types.enums[enum_name]
    lines = [f"/// Symbolic names of `{enum_name}` values.", f"pub const {fn_name}: &[(u32, &str)] = &["]
    lines += [f'    ({v & 0xffffffff:#x}, "{n}"),' for n, v in vals]
    return "\n".join(lines + ["];"]) + "\n"


def header_version(path, macro):
    m = re.search(rf"#define\s+{macro}\s+(\d+)", open(path).read())
    return int(m.group(1))


def stem(sym):
    s = re.sub(r"_(ptds|ptsz)$", "", sym)
    return re.sub(r"_v\d+$", "", s)


def proc_table(typedefs_h, symbols):
    """(api name, since version, per-thread flavour, symbol) from cudaTypedefs.h's PFN typedefs."""
    pfns = {}
    for m in re.finditer(r"typedef\s+CUresult\s+\(CUDAAPI\s+\*PFN_(\w+?)_v(\d+)(_ptds|_ptsz)?\)", open(typedefs_h).read()):
        base, ver, pt = m.group(1), int(m.group(2)), bool(m.group(3))
        pfns.setdefault((base, pt), set()).add(ver)
    table, problems = [], []
    for (base, pt), vers in sorted(pfns.items()):
        if pt:
            cands = [s for s in symbols if re.fullmatch(rf"{re.escape(base)}(_v\d+)?_(ptds|ptsz)", s)]
        else:
            cands = [s for s in symbols if re.fullmatch(rf"{re.escape(base)}(_v\d+)?", s)]
        if not cands:
            continue  # declared in another header (GL, EGL, VDPAU, profiler)

        def order(s):
            m = re.search(r"_v(\d+)(_pt..)?$", s)
            return int(m.group(1)) if m else 1

        cands.sort(key=order)
        vers = sorted(vers)
        if len(cands) < len(vers):
            # Fewer symbols than versions: the newest versions share the newest symbol.
            cands = cands + [cands[-1]] * (len(vers) - len(cands))
        if len(cands) > len(vers):
            problems.append(f"{base} pt={pt}: versions {vers} symbols {cands}")
            cands = cands[-len(vers):]
        for v, s in zip(vers, cands):
            table.append((base, v, 1 if pt else 0, s))
    return table, problems


def main():
    cuda_inc, nvml_inc = sys.argv[1], sys.argv[2]
    cuda_h = os.path.join(cuda_inc, "cuda.h")
    banner = "// @generated by bindings/cuda-abi/gen/generate.py from NVIDIA's {} ({}). Do not edit.\n#![allow(clippy::all, non_upper_case_globals)]\n\n"

    # --- CUDA driver API ---
    types = Types()
    default = parse(preprocess(cuda_h, [cuda_inc], []))
    types.collect(default)
    funcs = functions(default, types, "cu")
    internal = parse(preprocess(cuda_h, [cuda_inc], ["__CUDA_API_VERSION_INTERNAL"]))
    t2 = Types()
    t2.collect(internal)
    for name, sig in functions(internal, t2, "cu").items():
        funcs.setdefault(name, sig)
    bad = [n for n, (r, _) in funcs.items() if r != "u32"]
    assert not bad, f"functions not returning CUresult: {bad}"
    version = header_version(cuda_h, "CUDA_VERSION")
    table, problems = proc_table(os.path.join(cuda_inc, "cudaTypedefs.h"), set(funcs))
    for p in problems:
        print("warning:", p, file=sys.stderr)
    src = banner.format("cuda.h", f"CUDA_VERSION {version}")
    src += f"/// `CUDA_VERSION` of the header these bindings come from.\npub const CUDA_VERSION: u32 = {version};\n\n"
    src += emit_functions("cuda_driver_functions", funcs, f"Every function the CUDA driver library exports ({len(funcs)}), as declared in cuda.h.")
    src += "\n" + emit_enums(types, lambda n, v: True)
    src += "\n" + emit_names("CURESULT_NAMES", types, "cudaError_enum")
    src += "\n/// cuGetProcAddress: (API name, CUDA version it appeared in, 1 if per-thread default stream, exported symbol).\n"
    src += "pub const PROC_ADDRESS_TABLE: &[(&str, u32, u8, &str)] = &[\n"
    src += "".join(f'    ("{b}", {v}, {p}, "{s}"),\n' for b, v, p, s in table) + "];\n"
    open(os.path.join(OUT, "driver.rs"), "w").write(src)
    print(f"driver: {len(funcs)} functions, {len(table)} proc-address entries", file=sys.stderr)

    # --- NVML ---
    nvml_h = os.path.join(nvml_inc, "nvml.h")
    types = Types()
    default = parse(preprocess(nvml_h, [nvml_inc], []))
    types.collect(default)
    funcs = functions(default, types, "nvml")
    legacy = parse(preprocess(nvml_h, [nvml_inc], ["NVML_NO_UNVERSIONED_FUNC_DEFS"]))
    t2 = Types()
    t2.collect(legacy)
    for name, sig in functions(legacy, t2, "nvml").items():
        funcs.setdefault(name, sig)
    # nvmlErrorString returns const char*; the others return nvmlReturn_t.
    src = banner.format("nvml.h", "nvidia-nvml-dev-cu12")
    src += emit_functions("nvml_functions", funcs, f"Every function the NVML library exports ({len(funcs)}), as declared in nvml.h.")
    src += "\n" + emit_enums(types, lambda n, v: True)
    src += "\n" + emit_names("NVML_RETURN_NAMES", types, "nvmlReturn_enum")
    open(os.path.join(OUT, "nvml.rs"), "w").write(src)
    print(f"nvml: {len(funcs)} functions", file=sys.stderr)


if __name__ == "__main__":
    main()
