"""The two clients share one description of every call (client/_calls.py): each public
method's parameters are its description's, and the blocking and asyncio clients take the
same ones with the same defaults."""

from __future__ import annotations

import inspect

import pytest

from headserve.client import AsyncClient, Client, _calls

CALLS = [
    name
    for name, value in vars(_calls).items()
    if inspect.isfunction(value) and value.__module__ == _calls.__name__ and name != "arguments"
]


def _parameters(function: object) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()  # type: ignore[arg-type]
        if name not in _calls.TRANSPORT_ARGUMENTS
    }


def test_every_call_is_a_method_of_both_clients() -> None:
    assert len(CALLS) == 28
    public = {
        name
        for name, value in vars(Client).items()
        if callable(value) and not name.startswith("_") and name not in ("close", "with_options")
    }
    assert public == set(CALLS)


@pytest.mark.parametrize("name", CALLS)
def test_a_methods_parameters_are_its_descriptions(name: str) -> None:
    described = set(_parameters(getattr(_calls, name)))
    assert set(_parameters(getattr(Client, name))) == described
    assert set(_parameters(getattr(AsyncClient, name))) == described


@pytest.mark.parametrize("name", CALLS)
def test_both_clients_take_the_same_arguments_with_the_same_defaults(name: str) -> None:
    assert _parameters(getattr(Client, name)) == _parameters(getattr(AsyncClient, name))
