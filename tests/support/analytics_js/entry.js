// The test page's handle on Segment's library, unchanged: esbuild bundles this into one IIFE
// (analytics-next.iife.js) that defines window.SegmentAnalytics.AnalyticsBrowser.
export { AnalyticsBrowser } from '@segment/analytics-next'
