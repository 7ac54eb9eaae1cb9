"""Programs the interop tests run as subprocesses (nameko services and callers).

They run under nameko's eventlet, in their own processes: the asyncio test process
never imports nameko.
"""
