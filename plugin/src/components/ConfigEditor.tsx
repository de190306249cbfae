import React, { ChangeEvent } from 'react';
import { FieldSet, InlineField, Input, SecretInput } from '@grafana/ui';
import { DataSourcePluginOptionsEditorProps } from '@grafana/data';
import { HopwatchOptions, HopwatchSecureJsonData } from '../types';

type Props = DataSourcePluginOptionsEditorProps<HopwatchOptions, HopwatchSecureJsonData>;

/** Settings of a hopwatch datasource: where hopwatch is, which tenant, which token. */
export function ConfigEditor({ options, onOptionsChange }: Props) {
  const { jsonData, secureJsonFields, secureJsonData } = options;
  const setJSON = (key: keyof HopwatchOptions) => (e: ChangeEvent<HTMLInputElement>) =>
    onOptionsChange({ ...options, jsonData: { ...jsonData, [key]: e.target.value } });

  return (
    <>
      <FieldSet label="hopwatch">
        <InlineField label="URL" labelWidth={22} tooltip="hopwatch's HTTP API, the web port (:9800)">
          <Input
            id="config-url"
            aria-label="URL"
            width={48}
            placeholder="http://localhost:9800"
            value={options.url ?? ''}
            onChange={(e: ChangeEvent<HTMLInputElement>) => onOptionsChange({ ...options, url: e.target.value })}
          />
        </InlineField>
        <InlineField label="Tenant" labelWidth={22} tooltip="Sent as X-Scope-OrgID. Leave empty with a token: the token names its tenant.">
          <Input id="config-tenant" aria-label="Tenant" width={48} placeholder="anonymous" value={jsonData.tenant ?? ''} onChange={setJSON('tenant')} />
        </InlineField>
        <InlineField label="Bearer token" labelWidth={22} tooltip="A hopwatch token (hw_...), kept encrypted by Grafana and sent only by the backend">
          <SecretInput
            id="config-token"
            aria-label="Bearer token"
            width={48}
            placeholder="hw_..."
            isConfigured={!!secureJsonFields?.token}
            value={secureJsonData?.token ?? ''}
            onChange={(e: ChangeEvent<HTMLInputElement>) =>
              onOptionsChange({ ...options, secureJsonData: { ...secureJsonData, token: e.target.value } })
            }
            onReset={() =>
              onOptionsChange({
                ...options,
                secureJsonFields: { ...secureJsonFields, token: false },
                secureJsonData: { ...secureJsonData, token: '' },
              })
            }
          />
        </InlineField>
      </FieldSet>
      <FieldSet label="Trace links">
        <InlineField label="Traces datasource UID" labelWidth={22} tooltip="Tempo or Jaeger datasource that slow points' trace ids open in Explore">
          <Input aria-label="Traces datasource UID" width={48} value={jsonData.tracesDatasourceUid ?? ''} onChange={setJSON('tracesDatasourceUid')} />
        </InlineField>
        <InlineField label="Trace URL" labelWidth={22} tooltip="A trace's URL, ${__value.raw} standing for its id">
          <Input
            aria-label="Trace URL"
            width={48}
            placeholder="https://tracing.example/trace/${__value.raw}"
            value={jsonData.traceLinkUrl ?? ''}
            onChange={setJSON('traceLinkUrl')}
          />
        </InlineField>
      </FieldSet>
    </>
  );
}
