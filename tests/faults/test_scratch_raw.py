import os, time, redis
import pytest
from tests.support import services
from tests.support.services import fleet_config
from router import submit_job

def test_raw(fleet, database):
    prefix = os.environ["TIERFLOW_KEY_PREFIX"]
    ws = fleet(fleet_config(), workers=1)
    c = redis.Redis.from_url(services.REDIS_URL)
    print(sorted(k.decode() for k in c.scan_iter(f"{prefix}:q:*")))
    c.lpush(f"{prefix}:q:router", b"this is not json at all \x00\xff")
    c.lpush(f"{prefix}:q:router", b'{"body": 12}')
    time.sleep(3)
    print("alive", ws[0].proc.poll()); print(ws[0].output()[-2500:])
    r = submit_job("Extract topic from: 'x'", "extract_topic").wait(timeout=20)
    print(r.status)
    print(ws[0].output()[-3000:])
