import { DataSourceJsonData } from '@grafana/data';
import { DataQuery } from '@grafana/schema';

/** What a query asks hopwatch for (see plugin/pkg/plugin/query.go). */
export type Mode = 'exact' | 'sketch' | 'hops' | 'graph' | 'watermarks';

export interface HopwatchQuery extends DataQuery {
  mode?: Mode;
  /** A series selector such as {service="checkout"}; the metric name may be left out. */
  selector?: string;
  /** Quantiles in [0, 1]. */
  quantiles?: number[];
  /** The sliding window, a Prometheus duration (30s, 1m, 5m). */
  window?: string;
  /** Labels whose series are merged. */
  by?: string[];
  /** The exact path: the latency endpoint or quantile_over_time. */
  path?: 'latency' | 'promql';
  /** The service of the hops and graph views. */
  service?: string;
  /** Add the trace ids of slow points. */
  exemplars?: boolean;
}

export const DEFAULT_QUERY: Partial<HopwatchQuery> = {
  mode: 'exact',
  quantiles: [0.5, 0.9, 0.99],
  window: '1m',
  path: 'latency',
};

export const QUANTILE_CHOICES = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999];

export function quantileLabel(q: number): string {
  return 'P' + parseFloat((q * 100).toFixed(4)).toString();
}

/** Settings kept in jsonData. */
export interface HopwatchOptions extends DataSourceJsonData {
  /** Sent as X-Scope-OrgID. */
  tenant?: string;
  /** URL of a trace, ${__value.raw} standing for the trace id. */
  traceLinkUrl?: string;
  /** A tracing datasource (Tempo, Jaeger) that trace ids link to. */
  tracesDatasourceUid?: string;
}

/** Settings kept encrypted, seen only by the backend. */
export interface HopwatchSecureJsonData {
  token?: string;
}

/** The part of the datasource the query editor needs (label look-ups). */
export interface LabelSource {
  labelNames(): Promise<string[]>;
  labelValues(name: string, match?: string): Promise<string[]>;
}
