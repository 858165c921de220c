"""The measurements of bench.py, a module each: benches/<name>.py has bench_<name>(tmp, cfg), which returns what it
measured (the JSON's results[name]); tmp is a scratch folder, cfg bench.py's settings with the device resolved.
bench.py keeps the settings, their checks, the driver and the report."""
