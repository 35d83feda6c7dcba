"""The peer of benches/checkpoint.rs: orbax saves and restores the same state (a [P*rows, 1024]
f32 array sharded by rows over P devices, BASIC_CKPT_MB MiB a device) on local disk, in one
process over P CPU devices (orbax writes every shard from its own threads, as it does for the
addressable shards of one host). One JSON line a measurement, in the fields of the Rust bench:
"write" counts until the files are on disk (os.sync), as basic's writes do (each file synced);
"write-unsynced" until orbax returns."""
import json, os, sys, tempfile, time

p = int(os.environ.get("BASIC_CKPT_PROCESSES", "4"))
mib = int(os.environ.get("BASIC_CKPT_MB", "64"))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={p}"
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

cols = 1024
rows = mib * (1 << 20) // (4 * cols)
mesh = Mesh(np.array(jax.devices()[:p]), ("data",))
sharding = NamedSharding(mesh, P("data", None))
# Uniform values in [0, 1), as the Rust bench writes: trained weights do not compress, and orbax
# compresses what it writes (a regular pattern shrinks 1,000-fold).
host = np.random.default_rng(0).random((p * rows, cols), dtype=np.float32)
x = jax.device_put(host, sharding)
x.block_until_ready()


def report(op, seconds):
    print(json.dumps({"store": "local", "peer": "orbax", "op": op, "processes": p,
                      "mib_per_process": mib, "seconds": seconds,
                      "mib_s_per_process": mib / seconds, "mib_s_total": p * mib / seconds}),
          flush=True)


with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as d:
    path = os.path.join(d, "step")
    ckpt = ocp.StandardCheckpointer()
    t = time.perf_counter()
    ckpt.save(path, {"w": x})
    ckpt.wait_until_finished()
    report("write-unsynced", time.perf_counter() - t)
    # basic syncs each file it writes before it counts as written; the same, here, for orbax's.
    os.sync()
    report("write", time.perf_counter() - t)
    abstract = {"w": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)}
    t = time.perf_counter()
    got = ckpt.restore(path, abstract)
    got["w"].block_until_ready()
    report("restore", time.perf_counter() - t)
    assert np.array_equal(np.asarray(got["w"]), host), "orbax read back what it wrote"
