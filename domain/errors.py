"""Refusals the domain raises; front ends turn them into polite answers."""


class DomainError(Exception):
    """Base class: something the user asked for cannot be done."""


class NotFound(DomainError):
    pass


class AccessDenied(DomainError):
    """The actor may not see or change this object (also raised for forged ids)."""


class HandledElsewhere(DomainError):
    """The actor may follow this ticket (a household, a colleague, another level) but someone else works it now."""


class InvalidTransition(DomainError):
    """The ticket is no longer in a state where this action makes sense (a stale button)."""


class NotBound(DomainError):
    """The resident has not said which building they live in yet."""
