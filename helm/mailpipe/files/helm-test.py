"""`helm test`: the operator answers -- it takes a Campaign into its care and reports on it.

Creates a Campaign that names a pool which does not exist, in a namespace the
operator watches. A live operator adds its finalizer and writes the fan-out's
state into status (waiting for the pool: nothing is sent, no Kafka is needed).
Then the Campaign is deleted and must disappear, which only happens when the
operator releases its finalizer. Exit 0 only if both happened in time.

Runs in the test pod (in-cluster config; `helm test` on the stack's node in
tests/cluster/test_chart_on_node.py) and, unchanged, from a shell with KUBECONFIG.
"""

import os
import sys
import time
import uuid

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "mailpipe.io", "v1alpha1", "campaigns"
NAMESPACE = os.environ["MAILPIPE_TEST_NAMESPACE"]
TIMEOUT_SECONDS = float(os.environ.get("MAILPIPE_TEST_TIMEOUT_SECONDS", "60"))
POLL_SECONDS = 1.0


def wait(what, predicate):
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(POLL_SECONDS)
    sys.exit(f"FAIL: the operator did not answer within {TIMEOUT_SECONDS:.0f}s: {what}")


def main():
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    name = "helm-test-" + uuid.uuid4().hex[:8]
    campaign = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Campaign",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "poolRef": name,  # no such pool: the operator must say it waits for it
            "from": {"address": "helm-test@example.invalid"},
            "subject": "helm test",
            "text": "never sent",
            "audience": {"inline": [{"address": "nobody@example.invalid"}]},
        },
    }
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, campaign)

    def get():
        try:
            return api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    try:
        obj = wait(
            f"campaign {NAMESPACE}/{name} got no status.fanout",
            lambda: (o := get()) and o.get("status", {}).get("fanout", {}).get("state") and o,
        )
        fanout = obj["status"]["fanout"]
        print(f"operator answered: fan-out {fanout['state']} ({fanout.get('message', '')})")
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    wait(f"campaign {NAMESPACE}/{name} was not released after delete", lambda: get() is None)
    print("operator released the campaign on delete")


main()
