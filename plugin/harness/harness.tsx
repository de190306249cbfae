// The harness page: hopwatch's query and config editors and the frames a
// QueryData call returns, rendered outside Grafana. The page at
// ?page=query|config|data talks to the server plugin/harness_test.go runs:
// /api/resources/* is the plugin's CallResource and /api/query its QueryData,
// both answered by the real backend in front of a real hopwatch node.
import React, { useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';
import {
  applyFieldOverrides,
  createTheme,
  DataFrame,
  DataFrameJSON,
  dataFrameFromJSON,
  DataSourceSettings,
  FieldType,
  GrafanaTheme2,
} from '@grafana/data';
import { Card, ThemeContext } from '@grafana/ui';
import { QueryEditor } from '../src/components/QueryEditor';
import { ConfigEditor } from '../src/components/ConfigEditor';
import type { DataSource } from '../src/datasource';
import { HopwatchOptions, HopwatchQuery, HopwatchSecureJsonData, LabelSource } from '../src/types';

const theme = createTheme({ colors: { mode: 'dark' } });

async function resource<T>(path: string, params?: Record<string, string>): Promise<T> {
  const qs = params ? '?' + new URLSearchParams(params).toString() : '';
  const r = await fetch(`/api/resources/${path}${qs}`);
  if (!r.ok) {
    throw new Error(`${path}: ${r.status}`);
  }
  return (await r.json()).data ?? [];
}

// The part of the datasource the editors call: label look-ups, through the
// backend's CallResource as in Grafana.
const labels: LabelSource = {
  labelNames: () => resource<string[]>('labels'),
  labelValues: (name, match) => resource<string[]>(`label/${encodeURIComponent(name)}/values`, match ? { 'match[]': match } : undefined),
};
const datasource = labels as unknown as DataSource;

function QueryPage() {
  const [query, setQuery] = useState<HopwatchQuery>({ refId: 'A', mode: 'exact', quantiles: [0.5, 0.9, 0.99], window: '1m' });
  const [runs, setRuns] = useState(0);
  return (
    <div style={{ padding: 16, width: 1100 }}>
      <QueryEditor query={query} onChange={setQuery} onRunQuery={() => setRuns((n) => n + 1)} datasource={datasource} />
      <pre data-testid="query-model" style={{ color: theme.colors.text.secondary, marginTop: 16 }}>
        {JSON.stringify(query)}
      </pre>
      <span data-testid="query-runs" hidden>
        {runs}
      </span>
    </div>
  );
}

function ConfigPage() {
  const [options, setOptions] = useState<DataSourceSettings<HopwatchOptions, HopwatchSecureJsonData>>({
    id: 1,
    uid: 'hopwatch',
    orgId: 1,
    name: 'hopwatch',
    type: 'hopwatch-latency-datasource',
    typeName: 'hopwatch',
    typeLogoUrl: '',
    access: 'proxy',
    url: 'http://hopwatch:9800',
    user: '',
    database: '',
    basicAuth: false,
    basicAuthUser: '',
    isDefault: true,
    withCredentials: false,
    readOnly: false,
    jsonData: { tenant: 'demo', tracesDatasourceUid: 'tempo' },
    secureJsonFields: { token: true },
  });
  return (
    <div style={{ padding: 16, width: 800 }}>
      <ConfigEditor options={options} onOptionsChange={setOptions} />
      <pre data-testid="config-model" style={{ color: theme.colors.text.secondary }}>
        {JSON.stringify({ url: options.url, jsonData: options.jsonData, secureJsonFields: options.secureJsonFields })}
      </pre>
    </div>
  );
}

/** Plot draws a frame's number fields against its time field. */
function Plot({ frame, width, height }: { frame: DataFrame; width: number; height: number }) {
  const time = frame.fields.find((f) => f.type === FieldType.time);
  const ys = frame.fields.filter((f) => f.type === FieldType.number && !f.config.custom?.hideFrom?.viz && f.name !== 'samples');
  if (!time || ys.length === 0 || frame.length === 0) {
    return null;
  }
  const ts: number[] = time.values;
  const all = ys.flatMap((f) => f.values as number[]).filter((v) => Number.isFinite(v));
  const [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  const ymax = Math.max(...all) * 1.1 || 1;
  const pad = { l: 64, r: 260, t: 8, b: 24 };
  const x = (t: number) => pad.l + ((t - t0) / (t1 - t0 || 1)) * (width - pad.l - pad.r);
  const y = (v: number) => height - pad.b - (v / ymax) * (height - pad.t - pad.b);
  const colors = ['#73BF69', '#F2CC0C', '#F2495C', '#5794F2', '#B877D9'];
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * ymax);
  return (
    <svg width={width} height={height} data-testid="plot">
      {ticks.map((v) => (
        <g key={v}>
          <line x1={pad.l} x2={width - pad.r} y1={y(v)} y2={y(v)} stroke={theme.colors.border.weak} />
          <text x={pad.l - 6} y={y(v) + 4} fill={theme.colors.text.secondary} fontSize={11} textAnchor="end">
            {(v * 1000).toFixed(1)} ms
          </text>
        </g>
      ))}
      {ys.map((f, i) => {
        const pts = ts
          .map((t, j) => [t, f.values[j] as number])
          .filter(([, v]) => Number.isFinite(v))
          .map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`)
          .join(' ');
        return (
          <g key={f.name}>
            <polyline points={pts} fill="none" stroke={colors[i % colors.length]} strokeWidth={2} />
            <text x={width - pad.r + 8} y={pad.t + 14 + i * 16} fill={colors[i % colors.length]} fontSize={12}>
              {f.config.displayNameFromDS ?? f.name}
            </text>
          </g>
        );
      })}
      <text x={pad.l} y={height - 6} fill={theme.colors.text.secondary} fontSize={11}>
        {new Date(t0).toISOString().slice(11, 19)}
      </text>
      <text x={width - pad.r} y={height - 6} fill={theme.colors.text.secondary} fontSize={11} textAnchor="end">
        {new Date(t1).toISOString().slice(11, 19)}
      </text>
    </svg>
  );
}

/** FrameTable lists a frame's rows with each field's display processor. */
function FrameTable({ frame }: { frame: DataFrame }) {
  const fields = frame.fields.filter((f) => !f.config.custom?.hidden);
  const cell = { padding: '4px 10px', borderBottom: `1px solid ${theme.colors.border.weak}`, textAlign: 'left' as const };
  return (
    <table style={{ borderCollapse: 'collapse', width: 1040, fontSize: 12 }}>
      <thead>
        <tr>
          {fields.map((f) => (
            <th key={f.name} style={{ ...cell, color: theme.colors.text.secondary }}>
              {f.config.displayNameFromDS ?? f.name}
            </th>
          ))}
        </tr>
      </thead>
      <tbody>
        {Array.from({ length: Math.min(frame.length, 8) }, (_, i) => (
          <tr key={i}>
            {fields.map((f) => {
              const v = f.values[i];
              const d = f.display ? f.display(v) : undefined;
              return (
                <td key={f.name} style={cell}>
                  {d ? `${d.prefix ?? ''}${d.text}${d.suffix ?? ''}` : String(v)}
                </td>
              );
            })}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function withDisplay(frames: DataFrame[], t: GrafanaTheme2): DataFrame[] {
  return applyFieldOverrides({
    data: frames,
    fieldConfig: { defaults: {}, overrides: [] },
    replaceVariables: (s: string) => s,
    theme: t,
  });
}

interface Result {
  refId: string;
  title: string;
  frames: DataFrame[];
  error?: string;
}

/** DataPage asks the backend for the queries the Go test lists and draws the frames. */
function DataPage() {
  const [results, setResults] = useState<Result[] | undefined>();
  const [err, setErr] = useState<string | undefined>();
  useEffect(() => {
    fetch('/api/query', { method: 'POST' })
      .then((r) => r.json())
      .then((body: { titles: Record<string, string>; results: Record<string, { frames?: DataFrameJSON[]; error?: string }> }) =>
        setResults(
          Object.entries(body.results)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([refId, r]) => ({ refId, title: body.titles[refId] ?? refId, frames: (r.frames ?? []).map(dataFrameFromJSON), error: r.error }))
        )
      )
      .catch((e) => setErr(String(e)));
  }, []);
  const shown = useMemo(() => results?.map((r) => ({ ...r, frames: withDisplay(r.frames, theme) })), [results]);
  if (err) {
    return <div data-testid="data-error">{err}</div>;
  }
  if (!shown) {
    return <div>loading</div>;
  }
  return (
    <div style={{ padding: 16, width: 1100 }} data-testid="data-ready">
      {shown.map((r) => (
        <Card key={r.refId}>
          <Card.Heading>{r.title}</Card.Heading>
          <Card.Description>
            {r.error && <span data-testid="frame-error">{r.error}</span>}
            {r.frames.map((f, i) => (
              <div key={i} data-testid="frame" data-frame-name={f.name ?? ''}>
                <div style={{ color: theme.colors.text.secondary, margin: '4px 0' }}>{f.name}</div>
                {f.fields.some((fl) => fl.type === FieldType.time) ? (
                  <Plot frame={f} width={1040} height={220} />
                ) : (
                  <FrameTable frame={f} />
                )}
              </div>
            ))}
          </Card.Description>
        </Card>
      ))}
    </div>
  );
}

/** Boundary shows a render error on the page, where the test reads it. */
class Boundary extends React.Component<{ children: React.ReactNode }, { error?: Error }> {
  state: { error?: Error } = {};
  static getDerivedStateFromError(error: Error) {
    return { error };
  }
  render() {
    return this.state.error ? <pre data-testid="render-error">{String(this.state.error.stack ?? this.state.error)}</pre> : this.props.children;
  }
}

function Page() {
  const page = new URLSearchParams(window.location.search).get('page') ?? 'query';
  return (
    <ThemeContext.Provider value={theme}>
      <div style={{ background: theme.colors.background.primary, color: theme.colors.text.primary, fontFamily: theme.typography.fontFamily, fontSize: 14, minHeight: '100vh' }}>
        <Boundary>{page === 'config' ? <ConfigPage /> : page === 'data' ? <DataPage /> : <QueryPage />}</Boundary>
      </div>
    </ThemeContext.Provider>
  );
}



createRoot(document.getElementById('root')!).render(<Page />);
