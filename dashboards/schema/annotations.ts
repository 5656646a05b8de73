// Annotations whose target is an InfluxDB query. Grafana's schema makes an annotation's target the
// datasource's own query type (AnnotationQuery<TQuery extends DataQuery>, DataQuery by default);
// @grafana/schema does not publish the InfluxDB datasource's query, so its fields an InfluxQL
// annotation uses are declared here, as the datasource's query editor writes them: the raw InfluxQL
// (with $timeFilter) and the columns that become each marker's title, text and tags.
import type { AnnotationQuery, DataQuery, Dashboard } from '@grafana/schema';

export interface InfluxQuery extends DataQuery {
  query: string;
  rawQuery: boolean;
  resultFormat?: 'time_series' | 'table' | 'logs';
  fromAnnotations?: boolean;
  titleColumn?: string;
  textColumn?: string;
  tagsColumn?: string;
  timeEndColumn?: string;
}

export type Annotation = AnnotationQuery | AnnotationQuery<InfluxQuery>;

// The dashboard model with each annotation checked as either kind (the built-in one or an InfluxDB one).
export type DashboardModel = Omit<Dashboard, 'annotations'> & { annotations?: { list?: Annotation[] } };
