"""txflow's Grafana dashboards, as code: an overview and a page per stage.

    deploy/grafana/generate          writes deploy/grafana/*.json
    deploy/grafana/generate --check  fails if a committed file differs from what this makes

Every panel queries Prometheus scraping the stages under job="txflow"; the live test runs each
panel's query (with the variables set to match everything) against a real Prometheus.
"""

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The objective the alerts burn against: 99% of events reach their result within 5 s.
OBJECTIVE_SECONDS = 5
SELECTOR = 'stage=~"$stage", instance=~"$instance"'
# The router routes without a store or endpoints: no retry tiers, no breaker.
STAGES_WITH_RETRY_TIERS = ("ledger", "notifier")
STAGES_WITH_BREAKERS = ("gateway", "ledger", "notifier")


def query(expr, legend, ref):
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def graph(title, unit, description, *queries, width=12):
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(width)
    )
    for ref, (expr, legend) in zip("ABCDEFGH", queries):
        panel = panel.with_target(query(expr, legend, ref))
    return panel


def single(title, unit, description, expr, width=6):
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(width)
        .with_target(query(expr, "", "A"))
    )


def variables(board, stage=None):
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    if stage is None:
        board = board.with_variable(
            dashboard.QueryVariable("stage")
            .label("Stage")
            .datasource(DATASOURCE)
            .query("label_values(txflow_stage_ready, stage)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )
        scope = 'txflow_stage_ready{stage=~"$stage"}'
    else:
        board = board.with_variable(
            dashboard.ConstantVariable("stage").value(stage)
        )
        scope = f'txflow_stage_ready{{stage="{stage}"}}'
    return board.with_variable(
        dashboard.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query(f"label_values({scope}, instance)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )


def board(uid, title, description):
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["txflow"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )


def latency(metric, selector, legend_by):
    return [
        (
            f"histogram_quantile({q}, sum by ({legend_by}le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{int(q * 100)}" + (" {{" + legend_by.rstrip(", ") + "}}" if legend_by else ""),
        )
        for q in (0.5, 0.99)
    ]


def overview():
    b = variables(board(
        "txflow-overview",
        "txflow: overview",
        "Throughput, end-to-end latency against the 5 s objective, lag, dead letters and breakers of every stage.",
    ))
    ledger = 'stage="ledger", instance=~"$instance"'
    b = b.with_row(dashboard.Row("Service"))
    b = b.with_panel(single(
        "Stages ready", "none", "Stages reporting ready, of those running.",
        f'sum(txflow_stage_ready{{{SELECTOR}}}) / count(txflow_stage_ready{{{SELECTOR}}})', width=6,
    ).unit("percentunit"))
    b = b.with_panel(single(
        "End-to-end p99", "s", "99th percentile from an event entering txflow to its result committed, over 5 minutes.",
        f"histogram_quantile(0.99, sum by (le) (rate(txflow_end_to_end_seconds_bucket{{{ledger}}}[5m])))",
    ))
    b = b.with_panel(single(
        "Error budget burn (1 h)", "none",
        "How fast the latency objective's budget is spent: 1 is the planned pace, 14.4 pages.",
        "txflow:end_to_end_slow_ratio:rate1h / 0.01",
    ))
    b = b.with_panel(single(
        "Open breakers", "none", "Circuit breakers open now: their stage has paused.",
        f"count(txflow_circuit_state{{{SELECTOR}}} == 1) or vector(0)",
    ))
    b = b.with_panel(graph(
        "Throughput", "reqps", "Records consumed in committed batches, per second, by stage.",
        (f"sum by (stage) (rate(txflow_records_total{{{SELECTOR}}}[$__rate_interval]))", "{{stage}}"),
    ))
    b = b.with_panel(graph(
        "End-to-end latency", "s",
        "From an event's timestamp on the events topic to its result committed by the ledger; the line is the 5 s objective.",
        *latency("txflow_end_to_end_seconds", ledger, ""),
        (f"vector({OBJECTIVE_SECONDS})", "objective"),
    ))
    b = b.with_panel(graph(
        "Consumer lag", "short",
        "Records still to read, by stage and topic; retry records not yet due are not lag (next panel).",
        (f"sum by (stage, topic) (txflow_consumer_lag_records{{{SELECTOR}}})", "{{stage}} {{topic}}"),
    ))
    b = b.with_panel(graph(
        "Retry records waiting", "short", "Records on the retry tiers waiting for their due time.",
        (f"sum by (stage, topic) (txflow_retry_waiting_records{{{SELECTOR}}})", "{{stage}} {{topic}}"),
    ))
    b = b.with_panel(graph(
        "Dead letters", "short", "Records dead-lettered, by stage and error kind (see `txflow dlq stats`).",
        (f"sum by (stage, kind) (increase(txflow_dead_letters_total{{{SELECTOR}}}[$__rate_interval]))", "{{stage}} {{kind}}"),
    ))
    b = b.with_panel(graph(
        "Circuit breakers", "none", "0 closed, 1 open (the stage pauses), 2 half-open (a probe is let through).",
        (f"max by (stage, dependency) (txflow_circuit_state{{{SELECTOR}}})", "{{stage}} {{dependency}}"),
    ))
    return b


def stage_page(stage):
    b = variables(board(
        f"txflow-{stage}",
        f"txflow: {stage}",
        f"The {stage} stage: its batches, transactions, lag, failures and process.",
    ), stage)
    sel = f'stage="{stage}", instance=~"$instance"'
    proc = f'job="txflow", instance=~"$instance"'
    b = b.with_row(dashboard.Row("Work"))
    if stage == "gateway":
        b = b.with_panel(graph(
            "Requests", "reqps", "Requests answered, by route and status.",
            ('sum by (route, status) (rate(txflow_gateway_requests_total{instance=~"$instance"}[$__rate_interval]))', "{{route}} {{status}}"),
        ))
        b = b.with_panel(graph(
            "Request latency", "s", "From a request in to its answer.",
            *latency("txflow_gateway_request_duration_seconds", 'instance=~"$instance"', "route, "),
        ))
        b = b.with_panel(graph(
            "Refused", "reqps",
            "Rate-limited (429), and connections refused for being over the cap.",
            ('sum(rate(txflow_gateway_requests_total{instance=~"$instance", status="429"}[$__rate_interval])) or vector(0)', "rate limited"),
            ('sum(rate(txflow_gateway_connections_refused_total{instance=~"$instance"}[$__rate_interval])) or vector(0)', "connections refused"),
        ))
    elif stage == "archiver":
        b = b.with_panel(graph(
            "Archived", "reqps", "Records in archive files written, per second, by topic.",
            (f'sum by (topic) (rate(txflow_archived_records_total{{instance=~"$instance"}}[$__rate_interval]))', "{{topic}}"),
        ))
        b = b.with_panel(graph(
            "Written", "Bps", "Bytes of archive files written, per second, by topic.",
            (f'sum by (topic) (rate(txflow_archived_bytes_total{{instance=~"$instance"}}[$__rate_interval]))', "{{topic}}"),
        ))
        b = b.with_panel(graph(
            "Files", "short",
            "Archive files written, and found already there after a crash or a rebalance (taken as they are).",
            (f'sum by (topic, outcome) (increase(txflow_archive_files_total{{instance=~"$instance"}}[$__rate_interval]))', "{{topic}} {{outcome}}"),
        ))
        b = b.with_panel(graph(
            "Lag by partition", "short", "Records still to read; records held for a file not written yet are read.",
            (f"sum by (topic, partition) (txflow_consumer_lag_records{{{sel}}})", "{{topic}}/{{partition}}"),
        ))
    else:
        b = b.with_panel(graph(
            "Records and batches", "reqps", "Records in committed batches, and batches by outcome, per second.",
            (f"sum(rate(txflow_records_total{{{sel}}}[$__rate_interval]))", "records"),
            (f"sum by (outcome) (rate(txflow_batches_total{{{sel}}}[$__rate_interval]))", "batches {{outcome}}"),
        ))
        b = b.with_panel(graph(
            "Processing and commit", "s", "What the stage took over a batch, and its transaction's commit.",
            *[(e, "process " + l) for e, l in latency("txflow_process_duration_seconds", sel, "")],
            *[(e, "commit " + l) for e, l in latency("txflow_commit_duration_seconds", sel, "")],
        ))
        b = b.with_panel(graph(
            "Transactions", "reqps", "Transactions by outcome; aborted batches are read again.",
            (f"sum by (outcome) (rate(txflow_transactions_total{{{sel}}}[$__rate_interval]))", "{{outcome}}"),
        ))
        b = b.with_panel(graph(
            "End-to-end latency", "s", "From the event entering txflow to this stage's commit.",
            *latency("txflow_end_to_end_seconds", sel, ""),
            (f"vector({OBJECTIVE_SECONDS})", "objective"),
        ))
        b = b.with_panel(graph(
            "Lag by partition", "short", "Records still to read; retry records not yet due are apart.",
            (f"sum by (topic, partition) (txflow_consumer_lag_records{{{sel}}})", "{{topic}}/{{partition}}"),
            (f"sum by (topic) (txflow_retry_waiting_records{{{sel}}})", "{{topic}} waiting"),
        ))
        failures = [
            (f"sum by (kind) (increase(txflow_dead_letters_total{{{sel}}}[$__rate_interval]))", "dead letter {{kind}}"),
        ]
        if stage in STAGES_WITH_RETRY_TIERS:
            failures.insert(0, (f"sum by (tier) (increase(txflow_retries_total{{{sel}}}[$__rate_interval]))", "tier {{tier}}"))
        b = b.with_panel(graph(
            "Retries and dead letters", "short", "Records sent to each retry tier, and dead-lettered by kind.",
            *failures,
        ))
    if stage == "ledger":
        b = b.with_panel(graph(
            "Store latency", "s", "p99 of each store call, by operation.",
            (f"histogram_quantile(0.99, sum by (operation, le) (rate(txflow_store_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "{{operation}}"),
        ))
        b = b.with_panel(graph(
            "Conditional writes", "reqps",
            "Lightweight transactions by operation and outcome: refused means another writer moved the account on, or the event was recorded already.",
            (f"sum by (operation, outcome) (rate(txflow_store_conditional_writes_total{{{sel}}}[$__rate_interval]))", "{{operation}} {{outcome}}"),
        ))
    if stage in ("ledger", "notifier"):
        b = b.with_panel(graph(
            "Rate limit waits", "percentunit",
            "Share of time calls waited for a configured pace (ledger.max_store_writes_per_second, an endpoint's max_per_second); 0 when none is set.",
            (f"sum by (limiter) (rate(txflow_rate_limit_wait_seconds_total{{{sel}}}[$__rate_interval])) or vector(0)", "{{limiter}}"),
        ))
    if stage == "router":
        b = b.with_panel(graph(
            "Routed by rule", "reqps", "Records sent, by the rule that matched (default: none did).",
            ('sum by (rule) (rate(txflow_routed_total{instance=~"$instance"}[$__rate_interval]))', "{{rule}}"),
        ))
    if stage == "notifier":
        b = b.with_panel(graph(
            "Webhook deliveries", "reqps", "Delivery attempts by endpoint and outcome.",
            ('sum by (endpoint, outcome) (rate(txflow_webhook_deliveries_total{instance=~"$instance"}[$__rate_interval]))', "{{endpoint}} {{outcome}}"),
        ))
    if stage in STAGES_WITH_BREAKERS:
        b = b.with_panel(graph(
            "Circuit breakers", "none", "0 closed, 1 open (the stage pauses), 2 half-open.",
            (f"max by (dependency, instance) (txflow_circuit_state{{{sel}}})", "{{instance}} {{dependency}}"),
        ))
    b = b.with_row(dashboard.Row("Process"))
    b = b.with_panel(graph(
        "CPU", "percentunit", "CPU time per second, by instance.",
        (f"rate(process_cpu_seconds_total{{{proc}}}[$__rate_interval])", "{{instance}}"),
        width=8,
    ))
    b = b.with_panel(graph(
        "Resident memory", "bytes", "Resident set size, by instance.",
        (f"process_resident_memory_bytes{{{proc}}}", "{{instance}}"),
        width=8,
    ))
    b = b.with_panel(graph(
        "Open file descriptors", "short", "Open file descriptors, by instance.",
        (f"process_open_fds{{{proc}}}", "{{instance}}"),
        width=8,
    ))
    return b


def rendered():
    boards = {"overview": overview()}
    for stage in ("gateway", "router", "ledger", "notifier", "archiver"):
        boards[stage] = stage_page(stage)
    return {
        f"{name}.json": json.dumps(b.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, b in boards.items()
    }


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit("usage: deploy/grafana/generate [--check]")
    stale = []
    for name, text in rendered().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"deploy/grafana: {', '.join(stale)} differ from generate.py; run deploy/grafana/generate")


if __name__ == "__main__":
    main()
