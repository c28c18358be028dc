"""What a study says it ran on: every machine its runs were trained on, since the 2-core machines differ from
session to session and a resumed study can hold seeds from several."""

from pipeline.machine import devices_list, devices_text, devices_used, split_devices

EPYC, XEON, H200 = "cpu: AMD EPYC (2 cores)", "cpu: Intel(R) Xeon(R) Processor (2 cores)", "NVIDIA H200"


def test_a_study_resumed_on_another_machine_names_both_in_the_order_first_used():
    attrs = {"device_used": EPYC}  # a study from before the list: the one machine it recorded comes first
    attrs = {"devices_used": devices_used(attrs, XEON), "device_used": XEON}
    assert attrs["devices_used"] == [EPYC, XEON]
    assert devices_used(attrs, EPYC) == [EPYC, XEON]  # back on the first machine: listed once
    assert devices_text(attrs) == "cpu: AMD EPYC (2 cores) and cpu: Intel(R) Xeon(R) Processor (2 cores)"
    assert split_devices(devices_text(attrs)) == [EPYC, XEON]


def test_a_machine_that_an_older_checkout_recorded_since_is_not_lost():
    attrs = {"devices_used": [EPYC, XEON], "device_used": H200}  # code from before the list wrote only device_used
    assert devices_list(attrs) == [EPYC, XEON, H200] and devices_used(attrs, EPYC) == [EPYC, XEON, H200]


def test_one_machine_or_none_reads_as_before():
    assert devices_text({"device_used": EPYC}) == EPYC  # a study from before the list
    assert devices_text({"devices_used": devices_used({}, H200)}) == H200
    assert devices_text({}) is None and split_devices(None) == []
