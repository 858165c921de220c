"""
Settings for every script, nanoGPT style, made safe: a script defines its settings as plain
module-level names, then calls `configure(globals())`, which applies, left to right,

    python train.py config/some_file.py --batch_size=32 --dropout=0

- an argument without `--` is a Python config file, exec'd over the settings;
- `--key=value` sets one setting; the value is a Python literal (else taken as a string), split
  at the first `=` only, so values may contain `=`; a bare `--key` sets a boolean to True.

Unlike nanoGPT's configurator: an unknown name (in a flag or a config file) is an error that
suggests the closest known names; an int is accepted for a float setting; true/false (and 1/0) work for
booleans; a wrong type names the setting and the type; `--help` lists every setting with its
default and the comment beside it in the script. Errors are one line and exit non-zero.
"""
import ast
import difflib
import os
import re
import sys
import types
from nash.common import fail

SETTING_TYPES = (bool, int, float, str, type(None))


def setting_names(scope):
    """Settings are the script's plain lowercase names; _private and ALL_CAPS constants (often imported) are not."""
    return [k for k, v in scope.items() if not k.startswith("_") and not k.isupper() and isinstance(v, SETTING_TYPES)]


def unknown_setting(name, known, where):
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see --help for the list"
    fail(f"unknown setting '{name}' {where}{hint}")


def coerce(name, value, default, where):
    """Return value converted to the type of default, or fail with a message naming the setting."""
    if default is None:
        return value  # a setting without a default type takes any literal
    kind = type(default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        if type(value) is int and value in (0, 1):  # --tools=0, as people write a switch
            return bool(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # --dropout=0 is fine for a float setting
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    fail(f"setting '{name}' {where} expects {kind.__name__} (default {default!r}), got {value!r}")


def parse_value(text, default):
    if isinstance(default, str):
        return text  # strings are taken as typed: --out_dir=123 is the folder "123"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def comments_by_name(path):
    """The `# comment` at the end of each `name = value` line of the script, and of each `name: type = value`
    field line (model.py's GPTConfig, whose fields are train.py's model settings), for --help."""
    comments = {}
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"^\s{0,4}(\w+)\s*(?::[^=]*)?=\s*.*?#\s*(.*)$", line)
                if m:
                    comments.setdefault(m.group(1), m.group(2).strip())
    except (OSError, TypeError):
        pass
    return comments


def setting_groups(modules):
    """{heading: (file, {name: default})}: the settings block of each module, its plain module-level
    `name = default  # comment` lines (an objective's in nash/objectives/, LoRA's in nash/lora.py). A script merges
    them into its own settings before configure(), so they stay flat --key=value settings; --help lists them apart."""
    groups = {}
    for heading, module in modules.items():
        commented, scope = comments_by_name(module.__file__), vars(module)
        block = {k: scope[k] for k in setting_names(scope) if k in commented}
        if block:
            groups[heading] = (module.__file__, block)
    return groups


def print_help(scope, names, usage, groups):
    script = os.path.basename(scope.get("__file__") or "script.py")
    doc = (scope.get("__doc__") or "").strip()
    print(f"usage: python {script} {usage}\n")
    if doc:
        print(doc + "\n")
    comments = {**comments_by_name(scope.get("__settings_from__")), **comments_by_name(scope.get("__file__"))}
    grouped = {n for _, block in groups.values() for n in block}
    sections = [("", [n for n in names if n not in grouped], comments)]
    sections += [(f"\n{heading} ({os.path.relpath(path)}):", list(block), comments_by_name(path))
                 for heading, (path, block) in groups.items()]
    width = max(len(n) for n in names)
    for heading, section, notes in sections:
        if heading:
            print(heading)
        for n in section:
            note = f"  # {notes[n]}" if n in notes else ""
            print(f"  --{n.ljust(width)} = {scope[n]!r}{note}")


def configure(scope, argv=None, usage="[config_file.py ...] [--key=value ...]", given=None, groups=None,
              renamed=None):
    """Apply config files and --key=value flags from argv to the settings in scope (a script's
    globals). Returns the final settings as a dict, in the order the script defines them.
    usage is the argument synopsis --help shows; given, a set, receives the names a file or flag set
    (train.py tells a setting the user chose from a default that a checkpoint may replace); groups, from
    setting_groups(), are the blocks merged into scope, listed under their headings by --help; renamed maps an old
    setting name to its new one, so that the old one is an error naming the new."""
    given = set() if given is None else given
    argv = sys.argv[1:] if argv is None else argv
    names = setting_names(scope)
    renamed = renamed or {}
    if any(a in ("-h", "--help") for a in argv):
        print_help(scope, names, usage, groups or {})
        sys.exit(0)

    def unknown(key, where):
        if key in renamed:
            fail(f"the setting '{key}' {where} is now called '{renamed[key]}': write --{renamed[key]}=... "
                 f"(or {renamed[key]} = ... in a config file)")
        unknown_setting(key, names, where)
    for arg in argv:
        if not arg.startswith("--"):
            if os.path.isdir(arg):
                fail(f"config file {arg} is a folder; give a Python file of settings, like config/train_small.py")
            if not os.path.isfile(arg):
                fail(f"config file {arg} not found (arguments without -- are config files; flags look like --key=value)")
            try:
                with open(arg, encoding="utf-8") as f:
                    source = f.read()
            except UnicodeDecodeError as e:
                fail(f"config file {arg} is not UTF-8 text (byte {e.start}); save it as UTF-8 Python")
            except OSError as e:
                fail(f"cannot read config file {arg} ({e.strerror})")
            file_scope = {k: scope[k] for k in names}
            try:
                code = compile(source, arg, "exec", ast.PyCF_ONLY_AST)
                assigned = {n.id for n in ast.walk(code) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                exec(compile(code, arg, "exec"), file_scope)
            except Exception as e:  # one line, with where it went wrong
                fail(f"config file {arg} could not be run: {type(e).__name__}: {e}")
            given.update(assigned & set(names))
            for key, value in file_scope.items():
                if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue  # config files may import or define helpers
                if key not in names:
                    unknown(key, f"in config file {arg}")
                scope[key] = coerce(key, value, scope[key], f"in config file {arg}")
        else:
            key, eq, text = arg[2:].partition("=")
            if key not in names:
                unknown(key, f"(from {arg})")
            if not eq:
                if isinstance(scope[key], bool):
                    scope[key] = True  # a bare --force means --force=True
                    given.add(key)
                    continue
                fail(f"flag {arg} has no value; write --{key}=VALUE")
            scope[key] = coerce(key, parse_value(text, scope[key]), scope[key], f"(from {arg})")
            given.add(key)
    return {k: scope[k] for k in names}


# -----------------------------------------------------------------------------
# checks every script needs: one line naming the setting, before any work starts

def check_sampling(temperature, top_k, top_p):
    """The sampling settings that sample.py and chat.py share, each checked with a line that says the fix."""
    if temperature < 0:
        fail(f"temperature={temperature} cannot be negative; use 0 for greedy decoding, 1 for the model's distribution")
    if top_k < 0:
        fail(f"top_k={top_k} cannot be negative; use 0 to turn it off")
    if not 0.0 < top_p <= 1.0:
        fail(f"top_p={top_p} must be in (0, 1]; use 1.0 to turn it off")


def check_range(name, value, low=None, high=None, below=None, hint=""):
    """Fail unless value is a number with low <= value <= high (or < below), naming the setting."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # (not NaN)
    ok = ok and (low is None or value >= low) and (high is None or value <= high) and (below is None or value < below)
    if not ok:
        bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "",
                  f"< {below}" if below is not None else ""]
        bounds = " and ".join(b for b in bounds if b)
        fail(f"{name}={value!r} should be a number {bounds}" + (f"; {hint}" if hint else ""))
    return value


def check_output_file(name, path):
    """An output file must be writable where it is asked for: checked before the work, not lost after it."""
    if not path or os.path.isdir(path):
        fail(f"{name}={path!r} should be a file path{', not a folder' if path else ''}; e.g. --{name}=results.json")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        fail(f"the folder of --{name}={path} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        fail(f"cannot write --{name}={path}: its folder is not writable")
    return path


def check_output_dir(name, path):
    """An output folder: it may not exist yet (it is made), but it cannot be empty or an existing file."""
    if not path:
        fail(f"{name} is empty; give a folder, e.g. --{name}=out")
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            fail(f"{name}={path} is a symbolic link to nothing; remove it or choose another --{name}")
    except OSError as e:  # ELOOP: a symbolic link loop; EACCES, ENOTDIR: a path that cannot be a folder
        fail(f"{name}={path} cannot be used as a folder ({e.strerror}); choose another --{name}")
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"{name}={path} is a file, not a folder; choose another --{name}")
    return path
