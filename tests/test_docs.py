"""The docs run: every snippet of README.md and docs/*.md, as printed.

- ```python blocks: the blocks of one file run in order in one namespace (a later block may use an earlier one's
  names, as a reader would), a fresh namespace per file with a temporary working directory of its own (a snippet
  cannot write into the checkout), all files in one fresh process (imports cost seconds; it pays them once). A
  trailing comment that makes a claim about the statement it ends (an expression, or an assignment to one name) is
  checked:

  - ``# [2, 256, 25, 22]``: the shape of a tensor (or a torch.Size / tuple of ints); ``[N, C] / [B, C, H, W]`` for
    a tuple of tensors. A name stands for one size throughout the claim, and must equal the int of that name when
    the snippet defines one; ``...`` as the last entry allows any further dimensions. Text may follow the shapes.
  - ``# -> VALUE``: a Python literal equal to the value (a float as rounded in the claim);
    ``# -> 18 names: ['a', 'b', ...]``: 18 items, the first ones these. Text may follow the literal after ``: ``.

  A claim-shaped comment the test cannot attach to such a statement fails the test rather than go unchecked.
- ```yaml blocks parse.
- Commands in ```bash blocks and in inline code (``python tools/...``, ``python demo/...``, ``torchrun``,
  ``sparsevision-*``, ``make``): the script, entry point or Makefile target exists, every option the command shows is
  one its parser has, and the config files, shipped weights and zoo names it mentions exist. Nothing but the parsers
  runs (training commands take minutes): after the snippets, the same process builds each script's argparse parser
  and stops there.
"""
import ast
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]

FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```[ \t]*$', re.M | re.S)
INLINE_COMMAND = re.compile(r'(?<!`)`((?:python|torchrun|make|sparsevision-[\w-]+) [^`]*)`(?!`)')
SHAPE_CLAIM = re.compile(r'#\s*(\[[\w\s,.]*\](?:\s*/\s*\[[\w\s,.]*\])*)')
VALUE_CLAIM = re.compile(r'#\s*->\s*(?:(\d+) \w+: )?(.+?)\s*$')
PLACEHOLDER = re.compile(r'[$<>|]|^[A-Z][A-Z_]*$')        # $VAR, <name>, PATH|zoo, CONFIG


def fenced_blocks(path: Path, language: str):
    """``(line of the opening fence, code)`` of each fenced block in ``language``."""
    text = path.read_text()
    return [(text.count('\n', 0, match.start()) + 1, match.group(2))
            for match in FENCE.finditer(text) if match.group(1) == language]


def doc_params(has_content):
    return [pytest.param(path, id=path.name) for path in DOCS if has_content(path)]


# ---------------------------------------------------------------------------------------------------------------
# python blocks: run with their claims checked (in the fresh process of :func:`main`)


def literal_prefix(text: str) -> str:
    """The longest start of ``text`` that is a Python literal and ends the text or precedes ``: ...``, ``, ...``."""
    ends = [len(text), *(match.start() for match in re.finditer(r'[:;,] |\s\(', text))]
    for end in sorted(ends, reverse=True):
        try:
            ast.literal_eval(text[:end])
        except (ValueError, SyntaxError):
            continue
        return text[:end]
    raise ValueError(f'the claim {text!r} does not start with a Python literal')


def parse_claim(comment: str):
    match = VALUE_CLAIM.match(comment)
    if match:
        return 'value', (int(match.group(1)) if match.group(1) else None, literal_prefix(match.group(2)))
    match = SHAPE_CLAIM.match(comment)
    if match:
        return 'shape', [[dim.strip() for dim in group.strip().strip('[]').split(',') if dim.strip()]
                         for group in match.group(1).split('/')]
    return None


def trailing_claims(code: str, first_line: int) -> dict:
    """``{doc line: (claim, comment)}`` for the claim-shaped comments that follow code on their line."""
    claims = {}
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT and token.line[:token.start[1]].strip():
            claim = parse_claim(token.string)
            if claim:
                claims[token.start[0] + first_line] = claim, token.string
    return claims


class AttachClaims(ast.NodeTransformer):
    """Follow each statement that ends on a claim's line with ``__doc_claim__(value, line)``."""

    def __init__(self, claims: dict):
        self.claims = claims

    def _check(self, value: ast.expr, line: int) -> ast.expr:
        return ast.Call(ast.Name('__doc_claim__', ast.Load()), [value, ast.Constant(line)], [])

    def visit_Expr(self, node):
        if node.end_lineno in self.claims:
            node.value = self._check(node.value, node.end_lineno)
        return node

    def visit_Assign(self, node):
        if node.end_lineno in self.claims and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            check = ast.Expr(self._check(ast.Name(node.targets[0].id, ast.Load()), node.end_lineno))
            return [node, ast.copy_location(check, node)]
        return node


def plain(value):
    """torch.Size and other tuple subclasses as tuples, so that they compare with literals."""
    return tuple(value) if isinstance(value, tuple) else value


def matches_value(value, claim) -> bool:
    count, literal = claim
    expected = ast.literal_eval(literal)
    if count is not None and len(value) != count:
        return False
    if isinstance(expected, list) and expected and expected[-1] is Ellipsis:
        return list(value)[:len(expected) - 1] == expected[:-1]
    if isinstance(expected, float):
        decimals = len(literal.partition('.')[2]) if '.' in literal else 0
        return abs(float(value) - expected) <= 0.5 * 10 ** -decimals
    if isinstance(expected, list) and isinstance(value, tuple):
        expected = tuple(expected)
    return bool(plain(value) == expected)


def shapes(value):
    """The shape of a tensor, or the shapes of a tuple of tensors, for messages."""
    if hasattr(value, 'shape'):
        return tuple(value.shape)
    return [shapes(item) for item in value] if isinstance(value, (tuple, list)) and value else value


def matches_shapes(value, groups, namespace) -> bool:
    values = [value] if len(groups) == 1 else list(value)
    if len(values) != len(groups):
        return False
    sizes = {}
    for item, dims in zip(values, groups):
        shape = tuple(item.shape) if hasattr(item, 'shape') else tuple(item)
        if dims and dims[-1] == '...':
            dims, shape = dims[:-1], shape[:len(dims) - 1]
        if len(shape) != len(dims):
            return False
        for dim, size in zip(dims, shape):
            if dim.isdigit():
                if int(dim) != size:
                    return False
                continue
            known = namespace.get(dim)
            if isinstance(known, int) and known != size or sizes.setdefault(dim, size) != size:
                return False
    return True


def run_doc(doc: Path) -> None:
    """Run the python blocks of ``doc`` in order in one namespace, checking the claims of their comments."""
    namespace = {'__name__': '__main__'}
    for fence_line, code in fenced_blocks(doc, 'python'):
        claims = trailing_claims(code, fence_line)
        lines = dict(enumerate(code.splitlines(), fence_line + 1))

        def check(value, line, claims=claims, lines=lines):
            (kind, claim), comment = claims[line]
            ok = matches_value(value, claim) if kind == 'value' else matches_shapes(value, claim, namespace)
            shown = shapes(value) if kind == 'shape' else value
            assert ok, f'{doc.name}:{line}: {lines[line].strip()!r} gives {shown!r}, against the claim {comment!r}'
            return value

        tree = ast.parse(code, str(doc))
        ast.increment_lineno(tree, fence_line)
        claimed = AttachClaims(claims)
        tree = ast.fix_missing_locations(claimed.visit(tree))
        attached = {node.args[1].value for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == '__doc_claim__'}
        unattached = sorted(set(claims) - attached)
        assert not unattached, (f'{doc.name}: claims on lines {unattached} follow no expression or one-name '
                                'assignment that ends there; rewrite them so that the test can check them')
        namespace['__doc_claim__'] = check
        exec(compile(tree, str(doc), 'exec'), namespace)


def has_python(path: Path) -> bool:
    return bool(fenced_blocks(path, 'python'))


@pytest.mark.parametrize('doc', doc_params(has_python))
def test_python_snippets_run_and_their_claims_hold(doc, fresh_process):
    error = fresh_process['snippets'][doc.name]
    assert error is None, error


@pytest.mark.parametrize('doc', doc_params(lambda path: bool(fenced_blocks(path, 'yaml'))))
def test_yaml_snippets_parse(doc):
    import yaml

    for _, code in fenced_blocks(doc, 'yaml'):
        assert isinstance(yaml.safe_load(code), dict)


# ---------------------------------------------------------------------------------------------------------------
# commands: bash blocks and inline code


def entry_points() -> dict:
    """``{'sparsevision-train': 'sparsevision.cli.train:run', ...}`` from setup.py."""
    return dict(re.findall(r"'(sparsevision-[\w-]+) = ([\w.]+:\w+)'", (REPO / 'setup.py').read_text()))


def doc_commands(doc: Path):
    """``(where, argv)`` of each command in ``doc``: bash blocks (loops unrolled) and inline code."""
    texts = [(line + 1, code) for line, code in fenced_blocks(doc, 'bash')]
    text = FENCE.sub(lambda block: '\n' * block.group(0).count('\n'), doc.read_text())   # prose only
    texts += [(text.count('\n', 0, match.start()) + 1, match.group(1).replace('\n', ' '))
              for match in INLINE_COMMAND.finditer(text)]
    for first_line, code in texts:
        loops, pending, start = {}, '', first_line
        for number, line in enumerate(code.splitlines(), first_line):
            if not pending:
                start = number
            if line.endswith('\\'):                      # continued on the next line
                pending += line[:-1] + ' '
                continue
            command, pending = pending + line, ''
            tokens = shlex.split(command.replace(';', ' ; '), comments=True)
            segments = [list(group) for separator, group in
                        itertools.groupby(tokens, lambda token: token in (';', '&&', '||', '|')) if not separator]
            for segment in segments:
                while segment and segment[0] in ('do', 'done', 'then', 'fi'):
                    segment = segment[1:]
                if segment[:1] == ['for'] and segment[2:3] == ['in']:
                    loops[segment[1]] = segment[3:]
                elif segment:
                    yield from ((f'{doc.name}:{start}', argv) for argv in unroll(segment, loops))


def unroll(argv, loops):
    """``argv`` once for each combination of the loop variables it uses."""
    used = [name for name in loops if any(f'${name}' in arg or f'${{{name}}}' in arg for arg in argv)]
    for values in itertools.product(*(loops[name] for name in used)):
        expanded = list(argv)
        for name, value in zip(used, values):
            expanded = [arg.replace(f'${{{name}}}', value).replace(f'${name}', value) for arg in expanded]
        yield expanded


def parser_target(argv, where):
    """``(target, arguments)``: the script path or ``module:function sub-command`` whose parser reads ``arguments``."""
    program, args = argv[0], argv[1:]
    if program == 'torchrun':
        scripts = [index for index, arg in enumerate(args) if arg.endswith('.py')]
        assert scripts, f'{where}: torchrun runs no script: {argv}'
        program, args = 'python', args[scripts[0]:]
    if program == 'python':
        assert args and (REPO / args[0]).is_file(), f'{where}: no such script in the checkout: {argv}'
        return args[0], args[1:]
    function = entry_points().get(program)
    assert function, f'{where}: {program} is not one of the console scripts of setup.py: {sorted(entry_points())}'
    if program == 'sparsevision-demo':
        return f'{function} {args[0]}', args[1:]
    return function, args


def command_claims(doc: Path):
    """``(where, argv, target, arguments)`` of each command of ``doc`` that has a parser (Makefile targets apart)."""
    for where, argv in doc_commands(doc):
        while re.fullmatch(r'[A-Z_]+=\S*', argv[0]):  # an environment setting, e.g. SV_WITH_CUDA=0
            assert argv[0].split('=')[0] in (REPO / 'setup.py').read_text(), f'{where}: setup.py reads no {argv[0]}'
            argv = argv[1:]
        if argv[:2] == ['pip', 'install']:
            check_pip_install(argv[2:], where)
            continue
        if argv[0] == 'make':
            makefile = (REPO / 'Makefile').read_text()
            for target in argv[1:]:
                assert re.search(rf'^{re.escape(target)}\s*:', makefile, re.M), f'{where}: no make target {target}'
            continue
        assert argv[0] in ('python', 'torchrun') or argv[0].startswith('sparsevision-'), \
            f'{where}: a command the test does not know how to check: {argv}'
        yield (where, argv, *parser_target(argv, where))


def check_pip_install(arguments, where: str) -> None:
    """``pip install [--no-build-isolation] .[EXTRA,...]``: the checkout, with extras that setup.py declares."""
    targets = [argument.strip('"\'') for argument in arguments if argument != '--no-build-isolation']
    assert len(targets) == 1 and re.fullmatch(r'\.(\[[\w,]+\])?', targets[0]), f'{where}: pip install {arguments}'
    extras = re.search(r"extras_require=\{(.*?)\n    \}", (REPO / 'setup.py').read_text(), re.S).group(1)
    for extra in re.findall(r'[\w]+', targets[0].strip('.[]')):
        assert f"'{extra}':" in extras, f'{where}: setup.py declares no extra {extra!r}'


def has_commands(path: Path) -> bool:
    return any(True for _ in doc_commands(path))


def capture_parser(target: str):
    """The argparse parser that ``target`` (a script, or ``module:function [sub-command]``) builds from its argv."""
    import argparse
    import runpy
    from importlib import import_module

    class Parsed(BaseException):
        pass

    def stop(parser, *args, **kwargs):
        raise Parsed(parser)

    argparse.ArgumentParser.parse_known_args = stop
    script, *sub_command = target.split()
    sys.argv = [script, *sub_command, '--help']
    try:
        if script.endswith('.py'):
            sys.path.insert(0, str((REPO / script).parent))   # as `python SCRIPT` has it
            try:
                runpy.run_path(str(REPO / script), run_name='__main__')
            finally:
                sys.path.pop(0)
        else:
            module, function = script.split(':')
            getattr(import_module(module), function)()
    except Parsed as parsed:
        return parsed.args[0]
    raise AssertionError(f'{target} read no arguments with argparse')


def inventory(targets) -> dict:
    """``{'options': {target: [option strings]}, 'zoo': list_models()}``."""
    from sparsevision import list_models

    return dict(options={target: sorted(capture_parser(target)._option_string_actions) for target in targets},
                zoo=list_models())


def check_zoo_name(name, zoo, where, argv):
    assert PLACEHOLDER.search(name) or name in zoo, f'{where}: {name!r} is not a zoo model ({argv})'


@pytest.mark.parametrize('doc', doc_params(has_commands))
def test_commands_name_scripts_options_and_files_that_exist(doc, fresh_process):
    zoo = fresh_process['zoo']
    for where, argv, target, args in command_claims(doc):
        options = fresh_process['options'][target]
        previous = None
        for arg in (arg.lstrip('[').rstrip(']') for arg in args):
            if re.match(r'--?[A-Za-z]', arg):
                assert arg.split('=')[0] in options, f'{where}: {target} has no option {arg} ({argv}): {options}'
            elif arg.startswith('zoo:') or previous == '--model':
                name = arg.removeprefix('zoo:')
                if not (REPO / name).is_file():
                    check_zoo_name(name, zoo, where, argv)
            elif arg.startswith(('configs/', 'tools/', 'demo/', 'sparsevision/')) and not PLACEHOLDER.search(arg):
                assert list(REPO.glob(arg)), f'{where}: {arg} does not exist ({argv})'
                if arg.startswith(('configs/', 'sparsevision/model_zoo/weights/')):
                    check_zoo_name(Path(arg).stem, zoo, where, argv)
            previous = arg


# ---------------------------------------------------------------------------------------------------------------
# one fresh process runs the snippets, then reads the parsers (imports cost seconds; one process pays them once)


def main(results: Path, work_dir: Path) -> None:
    """Write ``{'snippets': {doc: None or the error}, 'options': ..., 'zoo': ...}`` to ``results``."""
    snippets = {}
    for doc in filter(has_python, DOCS):
        os.chdir(work_dir / doc.stem)                     # snippets write there, never into the checkout
        try:
            run_doc(doc)
            snippets[doc.name] = None
        except (Exception, SystemExit):
            snippets[doc.name] = traceback.format_exc()[-4000:]
    os.chdir(work_dir)
    targets = set()
    for doc in DOCS:
        try:
            targets.update(claim[2] for claim in command_claims(doc))
        except AssertionError:                            # the doc's own test reports it
            continue
    results.write_text(json.dumps(dict(snippets=snippets, **inventory(sorted(targets)))))


@pytest.fixture(scope='module')
def fresh_process(tmp_path_factory):
    """What :func:`main` finds, run in a fresh process (working directory: a temporary folder per doc)."""
    work_dir = tmp_path_factory.mktemp('docs')
    for doc in DOCS:
        (work_dir / doc.stem).mkdir()
    results = work_dir / 'results.json'
    result = subprocess.run([sys.executable, __file__, str(results), str(work_dir)], cwd=work_dir,
                            env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1'),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(results.read_text())


if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(sys.argv[2]))
