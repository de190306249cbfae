import { CoreApp, DataSourceInstanceSettings, ScopedVars } from '@grafana/data';
import { DataSourceWithBackend, getTemplateSrv } from '@grafana/runtime';

import { DEFAULT_QUERY, HopwatchOptions, HopwatchQuery, LabelSource } from './types';

interface PromEnvelope<T> {
  status: string;
  data: T;
}

export class DataSource extends DataSourceWithBackend<HopwatchQuery, HopwatchOptions> implements LabelSource {
  constructor(instanceSettings: DataSourceInstanceSettings<HopwatchOptions>) {
    super(instanceSettings);
  }

  getDefaultQuery(_: CoreApp): Partial<HopwatchQuery> {
    return DEFAULT_QUERY;
  }

  applyTemplateVariables(query: HopwatchQuery, scopedVars: ScopedVars): HopwatchQuery {
    const t = getTemplateSrv();
    return {
      ...query,
      selector: query.selector ? t.replace(query.selector, scopedVars) : query.selector,
      service: query.service ? t.replace(query.service, scopedVars) : query.service,
      window: query.window ? t.replace(query.window, scopedVars) : query.window,
    };
  }

  filterQuery(query: HopwatchQuery): boolean {
    return !query.hide && (query.mode !== 'hops' || !!query.service);
  }

  /** Label names of the tenant, through the backend's CallResource. */
  async labelNames(): Promise<string[]> {
    const r: PromEnvelope<string[]> = await this.getResource('labels');
    return r.data ?? [];
  }

  /** Values of a label, optionally of the series matching match. */
  async labelValues(name: string, match?: string): Promise<string[]> {
    const params = match ? { 'match[]': match } : undefined;
    const r: PromEnvelope<string[]> = await this.getResource(`label/${encodeURIComponent(name)}/values`, params);
    return r.data ?? [];
  }

  /** Series matching a selector. */
  async series(match: string): Promise<Array<Record<string, string>>> {
    const r: PromEnvelope<Array<Record<string, string>>> = await this.getResource('series', { 'match[]': match });
    return r.data ?? [];
  }

  /** Template variables: `label_values(name)` or `label_values(selector, name)`. */
  async metricFindQuery(query: string) {
    const m = /^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$/.exec(query);
    if (!m) {
      return [];
    }
    const values = await this.labelValues(m[2], m[1] ? getTemplateSrv().replace(m[1]) : undefined);
    return values.map((text) => ({ text }));
  }
}
