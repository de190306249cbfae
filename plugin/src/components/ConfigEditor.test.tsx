import React from 'react';
import { render, screen, fireEvent } from '@testing-library/react';
import { DataSourceSettings } from '@grafana/data';
import { ConfigEditor } from './ConfigEditor';
import { HopwatchOptions, HopwatchSecureJsonData } from '../types';

function settings(over: Partial<DataSourceSettings<HopwatchOptions, HopwatchSecureJsonData>> = {}) {
  return {
    id: 1,
    uid: 'hw',
    orgId: 1,
    name: 'hopwatch',
    type: 'hopwatch-latency-datasource',
    typeName: 'hopwatch',
    typeLogoUrl: '',
    access: 'proxy',
    url: 'http://localhost:9800',
    user: '',
    database: '',
    basicAuth: false,
    basicAuthUser: '',
    isDefault: false,
    jsonData: { tenant: 'team-a' },
    secureJsonFields: {},
    readOnly: false,
    withCredentials: false,
    ...over,
  } as DataSourceSettings<HopwatchOptions, HopwatchSecureJsonData>;
}

describe('ConfigEditor', () => {
  it('shows URL and tenant', () => {
    render(<ConfigEditor options={settings()} onOptionsChange={jest.fn()} />);
    expect(screen.getByLabelText('URL')).toHaveValue('http://localhost:9800');
    expect(screen.getByLabelText('Tenant')).toHaveValue('team-a');
  });

  it('writes the tenant to jsonData and the token to secureJsonData', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings()} onOptionsChange={onOptionsChange} />);
    fireEvent.change(screen.getByLabelText('Tenant'), { target: { value: 'team-b' } });
    expect(onOptionsChange).toHaveBeenLastCalledWith(expect.objectContaining({ jsonData: { tenant: 'team-b' } }));
    fireEvent.change(screen.getByLabelText('Bearer token'), { target: { value: 'hw_secret' } });
    const last = onOptionsChange.mock.calls[onOptionsChange.mock.calls.length - 1][0];
    expect(last.secureJsonData).toEqual({ token: 'hw_secret' });
    expect(last.jsonData).toEqual({ tenant: 'team-a' });
  });

  it('shows a configured token as configured, and resets it', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings({ secureJsonFields: { token: true } })} onOptionsChange={onOptionsChange} />);
    expect(screen.getByText('Reset')).toBeInTheDocument();
    fireEvent.click(screen.getByText('Reset'));
    expect(onOptionsChange).toHaveBeenCalledWith(expect.objectContaining({ secureJsonFields: { token: false } }));
  });
});
