"""Slurm: the generated job-array + merge script, and running it on a real single-node cluster."""

from __future__ import annotations


def test_cluster_runs_a_job(slurm, tmp_path):
    out = tmp_path / "hi.out"
    proc = slurm.run(["sbatch", "--parsable", f"--output={out}", "--wrap", "echo hi"], check=True)
    job = proc.stdout.strip().split(";")[0]
    assert slurm.wait_job(job, timeout=60) == "COMPLETED"
    assert out.read_text().strip() == "hi"
    assert any(row["id"] == job for row in slurm.squeue())
