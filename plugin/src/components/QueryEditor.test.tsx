import React from 'react';
import { render, screen, fireEvent, waitFor } from '@testing-library/react';
import { QueryEditor, addMatcher } from './QueryEditor';
import { DataSource } from '../datasource';
import { HopwatchQuery } from '../types';

function fakeDatasource() {
  return {
    labelNames: jest.fn().mockResolvedValue(['__name__', 'service', 'span_name']),
    labelValues: jest.fn().mockImplementation((name: string) =>
      Promise.resolve(name === 'service' ? ['api-gateway', 'log-processor', 'web-frontend'] : ['GET /api/logs'])
    ),
  } as unknown as DataSource;
}

function setup(query: Partial<HopwatchQuery> = {}) {
  const onChange = jest.fn();
  const onRunQuery = jest.fn();
  const datasource = fakeDatasource();
  render(<QueryEditor query={{ refId: 'A', ...query }} onChange={onChange} onRunQuery={onRunQuery} datasource={datasource} />);
  return { onChange, onRunQuery, datasource };
}

describe('addMatcher', () => {
  it('builds and extends selectors', () => {
    expect(addMatcher('', 'service', 'checkout')).toBe('{service="checkout"}');
    expect(addMatcher('{service="checkout"}', 'span_name', 'GET /a')).toBe('{service="checkout", span_name="GET /a"}');
    expect(addMatcher('hopwatch_latency_raw_seconds{}', 'service', 'x')).toBe('hopwatch_latency_raw_seconds{service="x"}');
    expect(addMatcher('{}', 'a', 'q"uote')).toBe('{a="q\\"uote"}');
  });
});

describe('QueryEditor', () => {
  it('shows the exact view by default with the default quantiles and window', async () => {
    const { datasource } = setup();
    expect(screen.getByLabelText('Selector')).toBeInTheDocument();
    expect(screen.getByText('P50')).toBeInTheDocument();
    expect(screen.getByText('P90')).toBeInTheDocument();
    expect(screen.getByText('P99')).toBeInTheDocument();
    expect(screen.getByLabelText('Window')).toHaveValue('1m');
    expect(screen.getByText('/api/v1/latency')).toBeInTheDocument();
    await waitFor(() => expect(datasource.labelNames).toHaveBeenCalled());
  });

  it('edits the selector and runs the query on blur', () => {
    const { onChange, onRunQuery } = setup();
    const input = screen.getByLabelText('Selector');
    fireEvent.change(input, { target: { value: '{service="checkout"}' } });
    expect(onChange).toHaveBeenCalledWith(expect.objectContaining({ selector: '{service="checkout"}' }));
    expect(onRunQuery).not.toHaveBeenCalled();
    fireEvent.blur(input);
    expect(onRunQuery).toHaveBeenCalled();
  });

  it('switches mode', () => {
    const { onChange, onRunQuery } = setup();
    fireEvent.click(screen.getByText('Sketch'));
    expect(onChange).toHaveBeenCalledWith(expect.objectContaining({ mode: 'sketch' }));
    expect(onRunQuery).toHaveBeenCalled();
  });

  it('shows the service picker in the hops view and asks the backend for services', async () => {
    const { datasource } = setup({ mode: 'hops', service: 'api-gateway' });
    expect(screen.queryByLabelText('Selector')).not.toBeInTheDocument();
    expect(screen.getAllByText('Hops of').length).toBeGreaterThan(1); // the mode button and the field's label
    await waitFor(() => expect(datasource.labelValues).toHaveBeenCalledWith('service'));
    expect(await screen.findByText('api-gateway')).toBeInTheDocument();
  });

  it('turns exemplars on', () => {
    const { onChange } = setup();
    fireEvent.click(screen.getByLabelText('Exemplars'));
    expect(onChange).toHaveBeenCalledWith(expect.objectContaining({ exemplars: true }));
  });

  it('has no quantiles or window in the watermarks view', () => {
    setup({ mode: 'watermarks' });
    expect(screen.queryByLabelText('Window')).not.toBeInTheDocument();
  });
});
