"""Loading one release's copied parser modules (tests/fixtures/engines/<release>/) with the rest of
the engine stubbed: `sglang.*` / `vllm.*` come from the copied files where there is one, and
everything else they import from the engine (and its engine-only third-party packages) is a stub."""

from __future__ import annotations

import importlib.abc
import importlib.util
import pathlib
import sys
import types
from typing import Any

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "engines"


class _AnyStubMeta(type):
    def __getattr__(cls, name: str) -> Any:
        return AnyStub

    def __getitem__(cls, item: Any) -> Any:
        return AnyStub

    def __or__(cls, other: Any) -> Any:
        return AnyStub

    __ror__ = __or__

    def __iter__(cls):
        return iter(())


class AnyStub(metaclass=_AnyStubMeta):
    """What a stubbed import gives: subclassable, callable, a pass-through decorator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return AnyStub()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (isinstance(args[0], type) or callable(args[0])):
            return args[0]
        return AnyStub()

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return AnyStub


class ReleaseFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads `sglang.*` / `vllm.*` from one release's copied files; stubs the rest of them and
    the engine-only third-party imports (xgrammar, transformers, openai, msgspec)."""

    STUBBED_TOP = ("sglang", "vllm", "xgrammar", "transformers", "openai", "msgspec", "torch")

    def __init__(self, root: pathlib.Path, overrides: dict[str, types.ModuleType]) -> None:
        self.root = root
        self.overrides = overrides

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in self.STUBBED_TOP:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        if spec.name in self.overrides:
            return self.overrides[spec.name]
        source = self.root / (spec.name.replace(".", "/") + ".py")
        module = types.ModuleType(spec.name) if source.exists() else _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        source = self.root / (module.__name__.replace(".", "/") + ".py")
        if module.__name__ not in self.overrides and source.exists():
            module.__file__ = str(source)
            exec(compile(source.read_text(), str(source), "exec"), module.__dict__)


def fake_module(name: str, **attrs: Any) -> types.ModuleType:
    """A stand-in module of the engine holding just `attrs` (what the copied code imports from it)."""
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


def load_release(release: str, overrides: dict[str, types.ModuleType]) -> ReleaseFinder:
    """Imports of `sglang.*`/`vllm.*` from now on come from `release`'s copies (or `overrides`)."""
    for name in list(sys.modules):
        if name.split(".")[0] in ReleaseFinder.STUBBED_TOP:
            del sys.modules[name]
    for finder in [f for f in sys.meta_path if isinstance(f, ReleaseFinder)]:
        sys.meta_path.remove(finder)
    finder = ReleaseFinder(FIXTURES / release, overrides)
    sys.meta_path.insert(0, finder)
    return finder
