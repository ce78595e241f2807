#!/usr/bin/python3
"""Count the test cases of a meson test run from its TAP output.

Prints one line per failed or skipped case and ends with
"N passed, N failed, N skipped".  Exits non-zero if anything failed.
"""
import json
import re
import sys

log = sys.argv[1] if len(sys.argv) > 1 else 'build/meson-logs/testlog.json'
passed = failed = skipped = 0
try:
    with open(log) as f:
        entries = [json.loads(line) for line in f if line.strip()]
except OSError as e:
    print(f'test-summary: {e}')
    print('0 passed, 1 failed')
    sys.exit(1)

for entry in entries:
    cases = failed_here = 0
    last_case = None
    for line in (entry.get('stdout') or '').splitlines():
        m = re.match(r'(not ok|ok)\s+\d+\s*(?:-\s*)?(\S*)(.*)$', line)
        if not m:
            continue
        cases += 1
        name = f"{entry['name']}: {m.group(2)}"
        last_case = name
        if m.group(1) == 'not ok' and '# TODO' not in m.group(3):
            failed += 1
            failed_here += 1
            print(f'FAIL {name}')
        elif '# SKIP' in m.group(3):
            skipped += 1
            print(f'SKIP {name}{m.group(3).split("# SKIP", 1)[1]}')
        else:
            passed += 1
    if entry['result'] == 'SKIP' and cases == 0:
        skipped += 1
        why = re.search(r'^1\.\.0 # SKIP (.*)$', entry.get('stdout') or '',
                        re.M)
        print(f"SKIP {entry['name']}: "
              f"{why.group(1) if why else 'no test case applies to this build'}")
        continue
    # A test binary that crashed or never printed a case still counts;
    # say where it stopped, since its TAP stream does not
    if entry['result'] not in ('OK', 'SKIP', 'EXPECTEDFAIL') and \
       not failed_here:
        failed += 1
        print(f"FAIL {entry['name']}: {entry['result']}, after "
              f"{last_case or 'no case'}")
        out = (entry.get('stdout') or '') + (entry.get('stderr') or '')
        for line in [ln for ln in out.splitlines()
                     if ln.startswith('Bail out!')][:3]:
            print(f'  {line}')
        for line in (entry.get('stderr') or '').splitlines()[-8:]:
            print(f'  | {line}')

print(f'{passed} passed, {failed} failed, {skipped} skipped')
sys.exit(1 if failed else 0)
