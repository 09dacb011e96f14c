"""Checks the chart's rendered manifests the way a pod would start: for every container of
every Deployment and Job, its configuration file and the files its environment names (mounted
ConfigMaps and Secrets, with stand-in secrets of the right kind) are laid out under a scratch
directory, and `txflow config check` runs with the container's environment; the router's
mounted rules go through `txflow rules test` with an example event.

    python3 check_rendered.py TXFLOW RENDERED.yaml EVENT.json
"""

import hashlib
import os
import re
import subprocess
import sys
import tempfile

import yaml

MOUNTS = "/etc/txflow/"


def stand_in_certificates(directory):
    """A CA and a certificate with its key that it signed (PEM), made with openssl."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca = f"{directory}/ca.key", f"{directory}/ca.pem"
    key, csr, cert = f"{directory}/tls.key", f"{directory}/tls.csr", f"{directory}/tls.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "1", "-subj", "/CN=txflow-chart-check-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=localhost")
    extensions = f"{directory}/tls.ext"
    with open(extensions, "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "1", "-extfile", extensions)
    return {kind: open(path).read() for kind, path in
            (("ca", ca), ("cert", cert), ("key", key))}


def stand_in(name, pems):
    """What a Secret's file named by the environment variable `name` holds."""
    upper = name.upper()
    if upper.endswith("API_KEYS_FILE"):
        return "chart-check " + hashlib.sha256(b"chart-check-key").hexdigest() + "\n"
    if "PASSWORD" in upper:
        return "a-password-for-the-chart-check\n"
    if "CA" in upper.replace("CERTIFICATE", ""):
        return pems["ca"]
    if "KEY" in upper:
        return pems["key"]
    if "CERT" in upper:
        return pems["cert"]
    raise SystemExit(f"check: no stand-in for the secret file of {name}")


def main(txflow, rendered, event):
    documents = [d for d in yaml.safe_load_all(open(rendered)) if d]
    config_maps = {d["metadata"]["name"]: d.get("data", {})
                   for d in documents if d["kind"] == "ConfigMap"}
    workloads = [d for d in documents if d["kind"] in ("Deployment", "Job")]
    if not workloads:
        raise SystemExit(f"check: {rendered} has no Deployment or Job")
    scratch = tempfile.mkdtemp(prefix="txflow-chart-check-")
    pems = stand_in_certificates(scratch)
    failures = 0
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            label = f"{workload['kind']} {workload['metadata']['name']}/{container['name']}"
            root = tempfile.mkdtemp(dir=scratch)
            moved = lambda text: text.replace(MOUNTS, root + MOUNTS)
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            # A value from a Secret's key, as the kubelet would give it: something is there.
            env.update({e["name"]: f"stand-in for {e['valueFrom']['secretKeyRef']['name']}"
                        for e in container.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})})
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                target = root + mount["mountPath"]
                os.makedirs(target, exist_ok=True)
                if "configMap" in volume:
                    for key, text in config_maps[volume["configMap"]["name"]].items():
                        with open(os.path.join(target, key), "w") as f:
                            f.write(moved(text))
            for name, value in env.items():
                if value.startswith(MOUNTS + "secrets/"):
                    os.makedirs(os.path.dirname(root + value), exist_ok=True)
                    with open(root + value, "w") as f:
                        f.write(stand_in(name, pems))
            config = open(root + env["TXFLOW_CONFIG"]).read()
            for path in re.findall(r'"(' + re.escape(root + MOUNTS) + r'webhooks/[^"]+)"', config):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("a-webhook-signing-secret-of-32-bytes\n")
            process_env = {k: v for k, v in os.environ.items() if not k.startswith("TXFLOW_")}
            process_env.update({k: moved(v) for k, v in env.items()})
            checked = subprocess.run([txflow, "config", "check"], env=process_env,
                                     capture_output=True, text=True)
            print(f"check: {label}: txflow {' '.join(container.get('args', []))}")
            print("  " + (checked.stdout + checked.stderr).strip().replace("\n", "\n  "))
            if checked.returncode != 0:
                failures += 1
                print(f"check: FAILED: {label}: txflow config check exited {checked.returncode}")
            rules = process_env.get("TXFLOW_ROUTER__RULES_FILE")
            if rules and container["name"] == "router":
                tested = subprocess.run([txflow, "rules", "test", rules, event],
                                        env=process_env, capture_output=True, text=True)
                print(f"  rules test {os.path.basename(event)}: " + tested.stdout.strip())
                if tested.returncode != 0:
                    failures += 1
                    print(f"check: FAILED: {label}: txflow rules test: {tested.stderr.strip()}")
    if failures:
        raise SystemExit(f"check: {failures} container(s) of {rendered} failed")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
