"""When things happen: APScheduler triggers that call domain operations.

Empty until deadlines, reminders and the monthly broadcasts arrive; the database, not the scheduler, will
decide whether a run already happened.
"""
