# Runs INSIDE the MicroPython unix port: the sound driver against the fake sound level
# module and microphone. One JSON line, which test_units.py asserts on.

import fakehw

W = {"scale": 50}
fakehw.configure(W)

import app  # noqa: E402, F401  (loaded first, as main.py does)
import hal  # noqa: E402
from mpcheck import out, read  # noqa: E402
from start import make  # noqa: E402


# Noise: an A-weighted sound level module whose level steps 60 / 80 dB(A) every 10 s, sampled
# every 2 s across a minute: laeq_db is the energy mean (77.0), not the mean of the
# levels (70); a microphone input read at once (no samples yet) still gives a level.
W["adc"] = {"34": {"dba": [60, 80], "step_s": 10, "dba_per_v": 50}, "35": {"db": 72.0, "cal_db": 28.0}}
snd = make({"type": "sound", "adc": 34, "dba_per_v": 50, "sample_s": 2})
end = hal.ticks_add(hal.ticks_ms(), 60000)
while hal.ticks_diff(end, hal.ticks_ms()) > 0:
    snd.sample()
    hal.sleep_ms(200)
samples = snd.n
leq = read(snd)
mic = read(make({"type": "sound", "adc": 35, "cal_db": 28.0}))
W["adc"]["34"]["dba"] = 0  # the module unplugged
dead = read(snd)
out("noise", leq=leq, samples=samples, mic=mic, dead=dead)
