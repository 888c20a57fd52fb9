// The Function App on the Flex Consumption plan (FC1, Linux, Python 3.11) with a system-assigned
// identity and every app setting config.py reads. Storage is identity-based (AzureWebJobsStorage__*),
// secrets are Key Vault references, the package lives in a blob container read with the identity.
@description('Region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Flex Consumption plan name.')
param planName string

@description('Function App name (also its host name: <name>.azurewebsites.net).')
param name string

@description('Instance memory (MB).')
param instanceMemoryMB int

@description('Most instances.')
param maximumInstanceCount int

@description('Spread the plan\'s instances over availability zones (only in regions that offer it for Flex Consumption).')
param zoneRedundant bool

@description('Storage account of the host and the app.')
param storageAccountName string

@description('Blob endpoint (https://<account>.blob.core.windows.net/).')
param blobEndpoint string

@description('Queue endpoint.')
param queueEndpoint string

@description('Table endpoint.')
param tableEndpoint string

@description('Queue, table and container names (see main.bicep).')
param storageNames object

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('PostgreSQL host name.')
param pgstacHost string

@description('pgstac database.')
param pgstacDatabase string

@description('PostgreSQL user of the app.')
param pgstacUser string

@description('Key Vault URI of the PostgreSQL password (versionless).')
param pgstacPasswordSecretUri string

@description('Key Vault URI of the webhook signing key (versionless).')
param webhookSecretUri string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy is the zoneRedundant parameter (off by default): Flex Consumption offers it only in some regions.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the HTTP API is the product; it is public (HTTPS only, TLS 1.2) and every function needs a function key. No VNet in this template.
  // checkov:skip=CKV_AZURE_17: clients authenticate with function keys (AuthLevel.FUNCTION); client certificates are not part of the API.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero and back; queued work survives the loss of an instance, so no always-ready instances are paid for.
  // checkov:skip=CKV_AZURE_213: the platform health check is not available on Flex Consumption; GET /api/health serves external probes.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      cors: { allowedOrigins: [] }
      // Every setting config.py reads (tests/test_infra.py checks this list against config.Settings). Three it
      // can read are deliberately absent: AzureWebJobsStorage (a connection string: the identity-based
      // settings below replace it), AzureWebJobsStorage__clientId (only for a user-assigned identity) and
      // OTEL_EXPORTER_OTLP_ENDPOINT (local tracing only; here the Application Insights connection string exports).
      appSettings: [
        // storage, identity-based (the host and the app read the same connection)
        { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__blobServiceUri', value: blobEndpoint }
        { name: 'AzureWebJobsStorage__queueServiceUri', value: queueEndpoint }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: tableEndpoint }
        { name: 'JOBS_QUEUE', value: storageNames.jobsQueue }
        { name: 'TASKS_QUEUE', value: storageNames.tasksQueue }
        { name: 'JOBS_TABLE', value: storageNames.jobsTable }
        { name: 'TASKS_TABLE', value: storageNames.tasksTable }
        { name: 'SCHEDULES_TABLE', value: storageNames.schedulesTable }
        { name: 'PAYLOAD_CONTAINER', value: storageNames.payloadContainer }
        { name: 'INPUT_CONTAINER', value: storageNames.inputContainer }
        { name: 'OUTPUT_CONTAINER', value: storageNames.outputContainer }
        { name: 'ALLOWED_CONTAINERS', value: '${storageNames.inputContainer},${storageNames.outputContainer}' }
        // engine
        { name: 'COUNTER_SHARDS', value: '32' }
        { name: 'PROGRESS_INTERVAL_S', value: '5' }
        { name: 'FANOUT_CHUNK', value: '2000' }
        { name: 'FANOUT_MAX_BACKLOG', value: '20000' }
        { name: 'FANOUT_PAUSE_S', value: '5' }
        { name: 'FANOUT_THREADS', value: '16' }
        { name: 'MAX_REQUEST_BYTES', value: '1048576' }
        { name: 'TASK_TIME_LIMIT_S', value: '300' }
        { name: 'MAX_CLOCK_SKEW_S', value: '60' }
        { name: 'RETRY_BASE_DELAY_S', value: '2' }
        { name: 'RETRY_MAX_DELAY_S', value: '120' }
        { name: 'SWEEPER_SCHEDULE', value: '0 */1 * * * *' }
        { name: 'SWEEPER_GRACE_S', value: '60' }
        { name: 'WORK_DIR', value: '/tmp' }
        { name: 'WHOLE_READ_BYTES', value: '4194304' }
        // jobs that start by themselves
        { name: 'SCHEDULES_TIMER', value: '0 */1 * * * *' }
        { name: 'WATCHES', value: '[]' }
        // size limits on user rasters and plans
        { name: 'MAX_RASTER_PIXELS', value: '20000000000' }
        { name: 'MAX_BLOCK_BYTES', value: '67108864' }
        { name: 'MAX_BANDS', value: '1000' }
        { name: 'MAX_TILES_PER_JOB', value: '10000' }
        { name: 'MAX_TASKS_PER_STAGE', value: '100000' }
        // outputs and catalogue
        { name: 'DEFAULT_COLLECTION', value: 'rasters' }
        { name: 'SAS_ENABLED', value: 'true' }
        { name: 'SAS_TTL_MINUTES', value: '60' }
        { name: 'PGSTAC_HOST', value: pgstacHost }
        { name: 'PGSTAC_PORT', value: '5432' }
        { name: 'PGSTAC_DBNAME', value: pgstacDatabase }
        { name: 'PGSTAC_USER', value: pgstacUser }
        { name: 'PGSTAC_PASSWORD', value: '@Microsoft.KeyVault(SecretUri=${pgstacPasswordSecretUri})' }
        { name: 'PGSTAC_SSLMODE', value: 'require' }
        // webhooks
        { name: 'WEBHOOK_SECRET', value: '@Microsoft.KeyVault(SecretUri=${webhookSecretUri})' }
        { name: 'WEBHOOK_ALLOW_LOOPBACK', value: 'false' }
        { name: 'WEBHOOK_MAX_ATTEMPTS', value: '6' }
        { name: 'WEBHOOK_TIMEOUT_S', value: '10' }
        // telemetry: ingestion with the app's identity (local auth is off on the component)
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD' }
        { name: 'OTEL_TRACES_EXPORTER', value: 'none' }
        // the Python worker runs sync functions on min(32, cores + 4) threads unless told: host.json's batchSize +
        // newBatchThreshold (16 + 8), so every message the host holds can run, and group commit has company
        { name: 'PYTHON_THREADPOOL_THREAD_COUNT', value: '24' }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${storageNames.deploymentContainer}'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = site.name
output principalId string = site.identity.principalId
output apiBaseUrl string = 'https://${site.properties.defaultHostName}/api'
