import React, { useEffect, useState } from 'react';
import { Button, InlineField, InlineFieldRow, InlineSwitch, Input, MultiSelect, RadioButtonGroup, Select } from '@grafana/ui';
import { QueryEditorProps, SelectableValue } from '@grafana/data';
import { DataSource } from '../datasource';
import { DEFAULT_QUERY, HopwatchOptions, HopwatchQuery, LabelSource, Mode, QUANTILE_CHOICES, quantileLabel } from '../types';

type Props = QueryEditorProps<DataSource, HopwatchQuery, HopwatchOptions>;

const MODES: Array<SelectableValue<Mode>> = [
  { label: 'Exact', value: 'exact', description: 'exact window quantiles of the raw tier' },
  { label: 'Sketch', value: 'sketch', description: 'histogram_quantile over the native histograms' },
  { label: 'Hops of', value: 'hops', description: "a service's stages, queue and network hops" },
  { label: 'Service graph', value: 'graph', description: 'edges with P50/P90/P99, clock offsets' },
  { label: 'Watermarks', value: 'watermarks', description: 'writers and their lag' },
];

const PATHS: Array<SelectableValue<'latency' | 'promql'>> = [
  { label: '/api/v1/latency', value: 'latency' },
  { label: 'quantile_over_time', value: 'promql' },
];

const toOptions = (xs: string[]): Array<SelectableValue<string>> => xs.map((x) => ({ label: x, value: x }));

/** addMatcher adds name="value" to a selector, keeping what it has. */
export function addMatcher(selector: string | undefined, name: string, value: string): string {
  const m = `${name}=${JSON.stringify(value)}`;
  const s = (selector ?? '').trim();
  if (s === '') {
    return `{${m}}`;
  }
  const open = s.indexOf('{');
  const close = s.lastIndexOf('}');
  if (open < 0 || close < open) {
    return `${s}{${m}}`;
  }
  const inner = s.slice(open + 1, close).trim();
  return `${s.slice(0, open + 1)}${inner ? inner + ', ' : ''}${m}}`;
}

/** LabelPicker picks a label and one of its values, with autocompletion through the backend. */
function LabelPicker({ source, selector, onAdd }: { source: LabelSource; selector?: string; onAdd: (n: string, v: string) => void }) {
  const [names, setNames] = useState<string[]>([]);
  const [name, setName] = useState<string | undefined>();
  const [values, setValues] = useState<string[]>([]);
  const [value, setValue] = useState<string | undefined>();

  useEffect(() => {
    source.labelNames().then((ns) => setNames(ns.filter((n) => n !== '__name__')), () => setNames([]));
  }, [source]);
  useEffect(() => {
    if (!name) {
      setValues([]);
      return;
    }
    const match = selector && selector.includes('{') ? selector : undefined;
    source.labelValues(name, match).then(setValues, () => setValues([]));
  }, [source, name, selector]);

  return (
    <>
      <InlineField label="Label">
        <Select aria-label="Label name" width={20} options={toOptions(names)} value={name ?? null} onChange={(v) => setName(v?.value)} />
      </InlineField>
      <InlineField label="=">
        <Select aria-label="Label value" width={28} options={toOptions(values)} value={value ?? null} onChange={(v) => setValue(v?.value)} />
      </InlineField>
      <Button
        aria-label="Add matcher"
        variant="secondary"
        icon="plus"
        disabled={!name || value === undefined}
        onClick={() => name && value !== undefined && onAdd(name, value)}
      >
        Add
      </Button>
    </>
  );
}

export function QueryEditor({ query, onChange, onRunQuery, datasource }: Props) {
  const q = { ...DEFAULT_QUERY, ...query };
  const mode = q.mode ?? 'exact';
  const set = (patch: Partial<HopwatchQuery>, run = true) => {
    onChange({ ...query, ...patch });
    if (run) {
      onRunQuery();
    }
  };
  const [services, setServices] = useState<string[]>([]);
  const [labelNames, setLabelNames] = useState<string[]>([]);
  useEffect(() => {
    datasource.labelValues('service').then(setServices, () => setServices([]));
    datasource.labelNames().then((ns) => setLabelNames(ns.filter((n) => n !== '__name__')), () => setLabelNames([]));
  }, [datasource]);

  const quantileOptions = Array.from(new Set([...QUANTILE_CHOICES, ...(q.quantiles ?? [])]))
    .sort((a, b) => a - b)
    .map((v) => ({ label: quantileLabel(v), value: v }));

  return (
    <div data-testid="hopwatch-query-editor">
      <InlineFieldRow>
        <InlineField label="Mode">
          <RadioButtonGroup<Mode> options={MODES} value={mode} onChange={(m) => set({ mode: m })} />
        </InlineField>
      </InlineFieldRow>
      {(mode === 'exact' || mode === 'sketch') && (
        <>
          <InlineFieldRow>
            <InlineField label="Selector" grow tooltip='Series selector, e.g. {service="checkout", span_kind="SPAN_KIND_SERVER"}'>
              <Input
                aria-label="Selector"
                placeholder='{service="checkout"}'
                value={q.selector ?? ''}
                onChange={(e) => set({ selector: e.currentTarget.value }, false)}
                onBlur={() => onRunQuery()}
              />
            </InlineField>
          </InlineFieldRow>
          <InlineFieldRow>
            <LabelPicker source={datasource} selector={q.selector} onAdd={(n, v) => set({ selector: addMatcher(q.selector, n, v) })} />
          </InlineFieldRow>
        </>
      )}
      {(mode === 'hops' || mode === 'graph') && (
        <InlineFieldRow>
          <InlineField label={mode === 'hops' ? 'Hops of' : 'Service'} tooltip={mode === 'graph' ? 'Only the edges of this service (empty: all)' : undefined}>
            <Select
              aria-label="Service"
              width={32}
              allowCustomValue
              isClearable={mode === 'graph'}
              options={toOptions(services)}
              value={q.service ?? null}
              onChange={(v) => set({ service: v?.value })}
            />
          </InlineField>
        </InlineFieldRow>
      )}
      {mode !== 'watermarks' && (
        <InlineFieldRow>
          <InlineField label="Quantiles">
            <MultiSelect<number>
              aria-label="Quantiles"
              width={40}
              options={quantileOptions}
              value={q.quantiles}
              onChange={(vs) => set({ quantiles: vs.map((v) => v.value!).sort((a, b) => a - b) })}
            />
          </InlineField>
          <InlineField label="Window" tooltip="Sliding window, a Prometheus duration">
            <Input aria-label="Window" width={10} value={q.window ?? ''} onChange={(e) => set({ window: e.currentTarget.value }, false)} onBlur={() => onRunQuery()} />
          </InlineField>
          {(mode === 'exact' || mode === 'sketch') && (
            <InlineField label="By" tooltip="Merge the series of each group (exact: their samples)">
              <MultiSelect<string>
                aria-label="By"
                width={28}
                options={toOptions(labelNames)}
                value={q.by ?? []}
                onChange={(vs) => set({ by: vs.map((v) => v.value!) })}
              />
            </InlineField>
          )}
        </InlineFieldRow>
      )}
      {(mode === 'exact' || mode === 'sketch') && (
        <InlineFieldRow>
          {mode === 'exact' && (
            <InlineField label="Exact path">
              <RadioButtonGroup options={PATHS} value={q.path ?? 'latency'} onChange={(p) => set({ path: p })} />
            </InlineField>
          )}
          <InlineField label="Exemplars" tooltip="Trace ids of slow points, linked to their traces">
            <InlineSwitch aria-label="Exemplars" value={!!q.exemplars} onChange={(e) => set({ exemplars: e.currentTarget.checked })} />
          </InlineField>
        </InlineFieldRow>
      )}
    </div>
  );
}
