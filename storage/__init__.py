"""Persistence: SQLAlchemy models, the engine and session factory, migrations and the FSM storage."""
